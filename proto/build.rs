//! Generates the etcd v3 API subset (server and client; the client serves tests and tools).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=etcd");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["etcd/kv.proto", "etcd/rpc.proto"], &["etcd"])
        .map_err(|e| {
            format!("generating the etcd API (is protoc installed? run scripts/setup): {e}")
        })?;
    Ok(())
}
