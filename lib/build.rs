// Makes every binary, test and example of this package find libtorch without
// environment variables, and keeps CUDA linked where libtorch has it.

use std::path::Path;

fn main() {
    // torch-sys (`links = "tch"`) publishes the libtorch it linked against.
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not report its libtorch directory (DEP_TCH_LIBTORCH_LIB); build through `make build`");
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    // Nothing in our code references a torch_cuda symbol, so `--as-needed` would drop
    // the library and `tch::Cuda::is_available()` would be false even on a GPU.
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
