# kbridge in a container: docker build -t kbridge:local .  (docker-compose.yml builds it for you)
FROM golang:1.26-alpine AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/kbridge ./cmd/kbridge

FROM alpine:3.22
# wget (busybox) serves the health checks; sh runs "kbridge worker --exec" handlers.
RUN apk add --no-cache ca-certificates && adduser -D -u 10001 kbridge
COPY --from=build /out/kbridge /usr/local/bin/kbridge
USER kbridge
ENTRYPOINT ["kbridge"]
CMD ["--help"]
