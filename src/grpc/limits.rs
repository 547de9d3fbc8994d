//! The process-wide bound on calls in flight: a call beyond it is refused at once, and a call
//! that runs too long (a request whose body never comes, say) is abandoned, so that no set of
//! peers can hold every slot.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Sleep;
use tonic::{body::Body, codegen::http, server::NamedService};

use super::status::{call_timed_out, calls_shed};

/// Wraps a gRPC service (AuthService) so that at most `permits` of its calls run at once across
/// every connection, each for at most `timeout`. Health and reflection stay outside it, so
/// that an overloaded server still answers its probes.
#[derive(Debug, Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    slots: Arc<Slots>,
    timeout: Duration,
}

impl<S> InFlightLimit<S> {
    /// `inner`, with at most `max_calls` calls in flight, each for at most `timeout`.
    pub fn new(inner: S, max_calls: usize, timeout: Duration) -> Self {
        Self {
            inner,
            slots: Arc::new(Slots::new(max_calls)),
            timeout,
        }
    }
}

/// The calls in flight against their cap. A call never waits for a slot, so a counter does
/// what a semaphore would, without the lock a semaphore takes on every release for the
/// waiters it never has here.
#[derive(Debug)]
struct Slots {
    taken: AtomicUsize,
    max: usize,
}

impl Slots {
    fn new(max: usize) -> Self {
        Self {
            taken: AtomicUsize::new(0),
            max,
        }
    }

    /// A slot, if one is free.
    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < self.max).then_some(taken + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(self)))
    }
}

/// One call's slot, free again once dropped.
#[derive(Debug)]
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S: NamedService> NamedService for InFlightLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for InFlightLimit<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<Body>, Error = Infallible>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = LimitedCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        match self.slots.try_take() {
            Some(slot) => LimitedCall {
                call: Some(self.inner.call(request)),
                timeout: self.timeout,
                timer: None,
                _slot: Some(slot),
            },
            None => {
                crate::metrics::call_shed();
                LimitedCall {
                    call: None,
                    timeout: self.timeout,
                    timer: None,
                    _slot: None,
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A call holding its slot, or a refusal for want of one. Its timer is set only once the
    /// call has to wait, for the whole timeout from then: most calls (a Validate whose request
    /// has arrived whole) answer at their first poll and never read the clock or touch the
    /// timer wheel, and those microseconds do not matter to a timeout of seconds.
    #[derive(Debug)]
    pub struct LimitedCall<F> {
        #[pin]
        call: Option<F>,
        timeout: Duration,
        timer: Option<Pin<Box<Sleep>>>,
        _slot: Option<Slot>,
    }
}

impl<F> Future for LimitedCall<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>>,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(call) = this.call.as_pin_mut() else {
            return Poll::Ready(Ok(calls_shed().into_http()));
        };
        if let Poll::Ready(answered) = call.poll(cx) {
            return Poll::Ready(answered);
        }
        let timeout = *this.timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        std::task::ready!(timer.as_mut().poll(cx));
        crate::metrics::call_timed_out();
        Poll::Ready(Ok(call_timed_out().into_http()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_up_to_the_cap_and_free_again_when_dropped() {
        let slots = Arc::new(Slots::new(2));
        let first = slots.try_take();
        let second = slots.try_take();
        assert!(first.is_some() && second.is_some());
        assert!(slots.try_take().is_none(), "a third slot beyond the cap");
        drop(first);
        assert!(
            slots.try_take().is_some(),
            "a dropped slot was not given back"
        );
        assert_eq!(slots.taken.load(Ordering::Acquire), 1);
    }
}
