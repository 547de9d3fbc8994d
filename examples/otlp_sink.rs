//! An OTLP/gRPC trace receiver that accepts every export and keeps nothing, so that
//! `scripts/bench.sh ... floor` can measure traced calls with a collector that keeps up.
//!
//!   cargo run --release --example otlp_sink -- 127.0.0.1:4317
#![allow(clippy::expect_used)] // a measuring tool: failing loudly is right

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tonic::{Request, Response, Status};

/// Accepts and drops.
#[derive(Debug, Default)]
struct Sink;

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        _: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main]
async fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".to_owned())
        .parse()
        .expect("an address such as 127.0.0.1:4317");
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Sink))
        .serve(address)
        .await
        .expect("serves");
}
