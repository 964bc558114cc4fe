// Tells the crate which libtorch the front ends link, so that Rust cells (compiled
// later by evcxr) link the same one.

fn main() {
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not report its libtorch directory (DEP_TCH_LIBTORCH_LIB); build through `make build`");
    };
    println!("cargo:rustc-env=TCHLAB_LIBTORCH_LIB={lib_dir}");
}
