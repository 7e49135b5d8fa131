# netward: the node agent image (`netward node`, `netward cleanup`).
#   docker build -t registry.example.invalid/netward:0.1.0 .
# Stage 1 builds a release binary with the pinned toolchain; stage 2 is a small
# Debian runtime with the netfilter userspace netward drives (nft, iptables-nft,
# ip6tables-nft, iproute2). No shell is needed at run time beyond what those bring.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# BuildKit caches keep the registry and the dependency builds between image builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p netward-proxy --bin netward \
 && install -D -m 0755 target/release/netward /out/netward

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iptables iproute2 ca-certificates \
 && update-alternatives --set iptables /usr/sbin/iptables-nft \
 && update-alternatives --set ip6tables /usr/sbin/ip6tables-nft \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/netward /usr/local/bin/netward
# Runs as root with only NET_ADMIN and NET_RAW (set by the DaemonSet).
ENTRYPOINT ["/usr/local/bin/netward"]
CMD ["node"]
