//! The floor of `validate_floor.rs` on authd's own allocator (mimalloc): what authd's
//! Validate costs above a transport that allocates as cheaply as authd's does, beside the
//! plain floor that the targets name. `scripts/bench.sh ... floor` runs both.
//!
//!   cargo run --release --example validate_floor_mimalloc -- 127.0.0.1:50073

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "validate_floor.rs"]
mod floor;

fn main() {
    floor::main();
}
