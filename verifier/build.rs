//! Compiles the AuthService client (the revocation feed and Validate) from `proto/`, with the
//! `client` feature only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "client")]
    {
        let mut config = tonic_prost_build::Config::new();
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
        let includes = [
            std::path::PathBuf::from("proto"),
            protoc_bin_vendored::include_path()?,
        ];
        tonic_prost_build::configure()
            .build_server(false)
            .compile_with_config(
                config,
                &[std::path::PathBuf::from("proto/auth/v1/auth.proto")],
                &includes,
            )?;
        println!("cargo:rerun-if-changed=proto/auth/v1/auth.proto");
    }
    Ok(())
}
