// The library's link set-up (rpath to libtorch, so this crate's tests run without
// environment variables) and TCHLAB_LIBTORCH_LIB, which tells Rust cells (compiled
// later by evcxr) which libtorch the front ends link, so that they link the same one.
include!("../lib/build_link.rs");

fn main() {
    link_libtorch();
}
