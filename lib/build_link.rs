// Makes every binary, test and example of the package whose build script includes this
// find libtorch without environment variables, and tells `tchlab::cuda` (and Rust cells,
// compiled later by evcxr) where libtorch is. Returns libtorch's lib directory.
fn link_libtorch() -> String {
    // torch-sys (`links = "tch"`) publishes the libtorch it linked against.
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not report its libtorch directory (DEP_TCH_LIBTORCH_LIB); build through `make build`");
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    // libtorch_cuda is not linked: `tchlab::cuda` opens it at run time where there is a GPU
    // (it would cost every start a fifth of a second); it looks here first.
    println!("cargo:rustc-env=TCHLAB_LIBTORCH_LIB={lib_dir}");
    lib_dir
}
