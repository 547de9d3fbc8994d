//! The hashing threads: a few dedicated threads, below the async runtime's priority, that
//! each keep one reusable argon2 buffer and take jobs from a bounded queue.

use std::sync::{Arc, Mutex};

use argon2::Block;
use tokio::sync::{mpsc, oneshot};
use tracing::Span;

use super::internal;
use crate::auth::AuthError;

/// Work for a hashing thread: runs with that thread's reusable memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// The job queue of the hashing threads; they stop when the last clone is dropped.
#[derive(Clone)]
pub(super) struct HashingThreads {
    jobs: mpsc::Sender<Job>,
}

impl HashingThreads {
    /// Starts `concurrency` threads with room for `queue` waiting jobs.
    pub(super) fn start(concurrency: usize, queue: usize) -> Result<Self, AuthError> {
        let (jobs, queue) = mpsc::channel::<Job>(queue.max(1));
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..concurrency {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || hashing_thread(&queue))
                .map_err(internal)?;
        }
        Ok(Self { jobs })
    }

    /// Runs `work` on a hashing thread. A full queue answers [`AuthError::Overloaded`] at once:
    /// waiting callers would otherwise pile up without bound.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let (done, result) = oneshot::channel();
        let span = Span::current();
        let job: Job = Box::new(move |memory| {
            let _ = done.send(span.in_scope(|| work(memory)));
        });
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => AuthError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => internal("the hashing threads have stopped"),
        })?;
        result.await.map_err(internal)
    }
}

/// Takes jobs until every sender is gone; the buffer grows to the largest hash seen.
/// Hashing runs below everything else (Linux: SCHED_IDLE; elsewhere the lowest priority): a
/// login flood must not take CPU from the async runtime, where Validate and Refresh need
/// microseconds. Logins wait for argon2 either way. Lowering one's own priority needs no
/// privilege; should it fail, the thread hashes at normal priority and says so.
fn lower_own_priority() {
    use thread_priority::ThreadPriority;
    #[cfg(target_os = "linux")]
    let lowered = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Min,
        thread_priority::ThreadSchedulePolicy::Normal(
            thread_priority::NormalThreadSchedulePolicy::Idle,
        ),
    );
    #[cfg(not(target_os = "linux"))]
    let lowered = thread_priority::set_current_thread_priority(ThreadPriority::Min);
    if let Err(e) = lowered {
        tracing::warn!(error = %e, "could not lower the hashing thread's priority");
    }
}

fn hashing_thread(queue: &Mutex<mpsc::Receiver<Job>>) {
    lower_own_priority();
    let mut memory = Vec::new();
    loop {
        // Only the idle thread that holds the lock waits on the queue; the others wait for the
        // lock. A poisoned lock means a job panicked while receiving: keep serving.
        let job = queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .blocking_recv();
        match job {
            Some(job) => job(&mut memory),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's scheduling policy (field 41 of its `stat`).
    #[cfg(target_os = "linux")]
    fn own_scheduling_policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The command name may hold spaces; the fields after its closing parenthesis do not.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        fields[38].parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_runs_below_the_async_runtime() {
        const SCHED_IDLE: u32 = 5;
        let runtime = own_scheduling_policy();
        let hashing = HashingThreads::start(1, 1)
            .unwrap()
            .run(|_| own_scheduling_policy())
            .await
            .unwrap();
        assert_eq!(
            hashing, SCHED_IDLE,
            "the runtime thread has policy {runtime}"
        );
    }
}
