# sockeye: one binary built with `deno compile`, on a minimal runtime image.

FROM denoland/deno:debian-2.9.6 AS build
WORKDIR /src
COPY deno.json deno.lock ./
COPY main.ts ./
COPY src ./src
COPY web ./web
RUN deno install --frozen --entrypoint main.ts \
 && deno compile --frozen --allow-all --output /out/sockeye main.ts

FROM gcr.io/distroless/cc-debian12:nonroot
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
