# Production image: the conventional multi-stage build, for machines that
# can pull images (the build machines cannot: they use Dockerfile.dev).
# The same image runs the coordinator, the counters and simulate; the
# compose file chooses the command. See docs/containers.md.
FROM rust:1.90-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins \
 && mkdir -p /out \
 && cp target/release/coordinator target/release/counter target/release/simulate /out/

FROM debian:bookworm-slim
COPY --from=builder /out/ /usr/local/bin/
RUN mkdir -p /data
VOLUME /data
EXPOSE 8080 8081
CMD ["/usr/local/bin/coordinator"]
