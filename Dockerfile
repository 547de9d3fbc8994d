# syntax=docker/dockerfile:1
# authd's image: built with the Rust toolchain, run on distroless as a non-root user.
#   docker build -t authd:0.1.0 .
#   docker run -p 50051:50051 -p 8080:8080 authd:0.1.0
# Nothing but the binary ships: no shell, no package manager, no compiler.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# protoc comes from the protoc-bin-vendored crate; nothing else is needed to build.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile production --locked --bin authd \
 && cp target/production/authd /authd

# glibc and libgcc, CA certificates, and a "nonroot" user (65532) with a writable home.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /authd /usr/local/bin/authd
USER 65532:65532
# With no AUTH_DATABASE_URL, the SQLite default and a generated key land in ./data here.
WORKDIR /home/nonroot
ENV AUTH_LISTEN=0.0.0.0:50051 \
    AUTH_HTTP_LISTEN=0.0.0.0:8080 \
    AUTH_LOG_FORMAT=json
EXPOSE 50051 8080
ENTRYPOINT ["/usr/local/bin/authd"]
CMD ["serve"]
