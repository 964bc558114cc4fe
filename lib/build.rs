// Makes every binary, test and example of this package find libtorch without
// environment variables, and tells `tchlab::cuda` where libtorch_cuda is.

fn main() {
    // torch-sys (`links = "tch"`) publishes the libtorch it linked against.
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not report its libtorch directory (DEP_TCH_LIBTORCH_LIB); build through `make build`");
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    // libtorch_cuda is not linked: `tchlab::cuda` opens it at run time where there is a GPU
    // (it would cost every start a fifth of a second); it looks here first.
    println!("cargo:rustc-env=TCHLAB_LIBTORCH_LIB={lib_dir}");
}
