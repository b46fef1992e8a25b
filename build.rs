//! Build script of `infer-core` (referenced as `build = "../../build.rs"`).
//! Without the `cuda` feature it does nothing.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
}
