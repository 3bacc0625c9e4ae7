# syntax=docker/dockerfile:1

# ---- build: a release binary from the locked dependency set ----
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked

# ---- runtime: glibc, the binary, an unprivileged user ----
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /app --create-home app \
    && mkdir /app/data && chown app:app /app/data
COPY --from=build /src/target/release/llm-feedback /usr/local/bin/llm-feedback
USER app
WORKDIR /app
# Listen on every interface inside the container; the embedded SQLite store
# (used when DATABASE_URL is unset) lives in /app/data: mount a volume there.
ENV LISTEN_ADDR=0.0.0.0:8080
EXPOSE 8080
# The binary checks itself (GET /healthz on LISTEN_ADDR): no curl needed.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["llm-feedback", "healthcheck"]
ENTRYPOINT ["llm-feedback"]
CMD ["serve"]
