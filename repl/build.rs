// The same link set-up as the library's: rpath to libtorch, CUDA kept linked.
include!("../lib/build_link.rs");

fn main() {
    link_libtorch();
}
