# sockeye: one binary built with `deno compile`, on a minimal runtime image.
# Multi-arch: the build stage runs on the builder's platform and compiles for
# the target's (`deno compile --target`), so no emulation is needed.

FROM --platform=$BUILDPLATFORM denoland/deno:debian-2.9.6 AS build
ARG TARGETARCH
WORKDIR /src
COPY deno.json deno.lock ./
COPY main.ts ./
COPY src ./src
COPY web ./web
RUN case "${TARGETARCH:-amd64}" in \
      amd64) target=x86_64-unknown-linux-gnu ;; \
      arm64) target=aarch64-unknown-linux-gnu ;; \
      *) echo "no deno compile target for $TARGETARCH" >&2; exit 1 ;; \
    esac \
 && deno install --frozen --entrypoint main.ts \
 && deno compile --frozen --allow-all --target "$target" --output /out/sockeye main.ts

FROM gcr.io/distroless/cc-debian12:nonroot
# OCI annotations; the release workflow passes the tag, commit and repository.
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="sockeye" \
      org.opencontainers.image.description="WebSocket session service: counts, heartbeats, resumable sessions, clean drains" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION" \
      org.opencontainers.image.source="$SOURCE"
WORKDIR /app
COPY --from=build /out/sockeye /app/sockeye
USER nonroot:nonroot
ENV PORT=8000 HOST=0.0.0.0
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/app/sockeye", "healthcheck"]
ENTRYPOINT ["/app/sockeye"]
CMD ["serve"]
