# sluice: one binary, built with cgo (the SQL parser, pg_query, is C) and run
# on a slim Debian of the same release as the build image, so the glibc it
# was linked against is the one it runs with.
#
#   docker build -t sluice:dev .
#   docker run --rm sluice:dev sluice version

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=""
RUN CGO_ENABLED=1 go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/sluice ./cmd/sluice

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/sluice --create-home sluice
COPY --from=build /out/sluice /usr/local/bin/sluice
USER sluice
WORKDIR /var/lib/sluice
# 18000 xDS (ADS), 9001 ext_authz, 9002 ext_proc, 8080 API (grants, audit,
# /metrics): the addresses policies/examples/compose.yaml binds.
EXPOSE 18000 9001 9002 8080
CMD ["sluice", "serve", "--config", "/etc/sluice/config.yaml"]
