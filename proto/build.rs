//! Compiles `proto/geosync/v1/*.proto` into Rust with pure-Rust tools, so a
//! fresh machine needs no `protoc`: `protox` parses the files into a
//! `FileDescriptorSet`, and `tonic-prost-build` generates the prost messages
//! and the tonic clients and servers from it.

use std::error::Error;
use std::path::PathBuf;

/// The `.proto` files, relative to the include directory.
const PROTO_FILES: [&str; 5] = [
    "geosync/v1/types.proto",
    "geosync/v1/coordinator.proto",
    "geosync/v1/chunks.proto",
    "geosync/v1/admin.proto",
    "geosync/v1/files.proto",
];

/// Where the encoded `FileDescriptorSet` goes in `OUT_DIR` (for gRPC reflection).
const DESCRIPTOR_FILE: &str = "geosync_v1_descriptor.bin";

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?,
    );
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let include = manifest_dir.join("proto");

    // A directory makes cargo rerun on any change below it (added files too).
    println!("cargo:rerun-if-changed={}", include.display());
    println!("cargo:rerun-if-changed=build.rs");

    let mut compiler = protox::Compiler::new([&include])?;
    // Source info carries the comments, which become the generated rustdoc.
    compiler.include_source_info(true).include_imports(true);
    for file in PROTO_FILES {
        compiler
            .open_file(file)
            // protox's `Debug` (not its `Display`) names the file, line and column.
            .map_err(|e| format!("compiling {file}: {e:?}"))?;
    }
    std::fs::write(
        out_dir.join(DESCRIPTOR_FILE),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        // Chunk data is the bulk of the traffic: as `Bytes` it can be split off the receive
        // buffer instead of copied.
        .bytes(".geosync.v1.Chunk.data")
        // A deterministic order for the one map field, so equal values print alike.
        .btree_map(".geosync.v1.SyncStatus.versions")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
