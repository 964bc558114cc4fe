// The link set-up every crate shares (build_link.rs), and the C++ shim for the libtorch
// operators tch does not bind (src/shim.cpp), built as torch-sys builds its own
// C++: the same headers, standard and ABI.

include!("build_link.rs");

fn main() {
    let lib_dir = link_libtorch();
    let root = std::path::Path::new(&lib_dir).parent().expect("libtorch's lib directory has a parent").to_path_buf();
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    println!("cargo:rerun-if-changed=src/shim.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("src/shim.cpp")
        .compile("tchlab_shim");
}
