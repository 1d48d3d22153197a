# Builds every Triage binary into one small runtime image; compose.yaml runs
# each service from it with a different command. (Not built in CI: the CI
# machine has no Docker. Build with: docker build -t triage .)

# --- build -------------------------------------------------------------------
# Any stable toolchain at or above the workspace rust-version.
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not refetch crates.
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY services services
COPY replay replay
COPY migrations migrations
COPY schemas schemas
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && find target/release -maxdepth 1 -type f -executable -name 'triage*' -exec cp {} /out/ \; \
    && ls -l /out

# --- run ---------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/triage --create-home triage \
    && mkdir -p /var/cache/triage/models && chown -R triage /var/cache/triage
COPY --from=build /out/ /usr/local/bin/
COPY migrations /opt/triage/migrations
COPY schemas /opt/triage/schemas
# Models (all-MiniLM-L6-v2 for the router) are mounted here, not baked in.
ENV TRIAGE_CACHE=/var/cache/triage
USER triage
WORKDIR /var/lib/triage
# compose.yaml sets the command per service.
CMD ["triage-router", "--help"]
