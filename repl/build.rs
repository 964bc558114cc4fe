// The same link set-up as the library's: rpath to libtorch, CUDA kept linked.
include!("../lib/build.rs");
