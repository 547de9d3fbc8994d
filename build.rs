//! Compiles `proto/` with tonic-prost-build and writes the descriptor set that server
//! reflection serves. protoc comes from `protoc-bin-vendored`, so no system install is needed.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    let well_known = protoc_bin_vendored::include_path()?;
    let includes = [PathBuf::from("proto"), well_known];
    tonic_prost_build::configure()
        .codec_path("crate::grpc::codec::StrictProstCodec")
        .file_descriptor_set_path(out_dir.join("auth_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                PathBuf::from("proto/auth/v1/auth.proto"),
                PathBuf::from("proto/auth/v1/admin.proto"),
            ],
            &includes,
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
