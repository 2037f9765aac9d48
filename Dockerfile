# syntax=docker/dockerfile:1
# One image for every GreenMesh component. Each container runs `greenmesh serve <component>` (and the service
# pods' init container `greenmesh migrate <component>`); the manifests in deploy/k8s pass these as args.
#   docker build -t ghcr.io/greenmesh/greenmesh:0.1.0 .
#   docker run --rm ghcr.io/greenmesh/greenmesh:0.1.0 serve gateway

# ---- build: install the project and its dependencies into a virtual environment ----
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# The venv lives at the same path in both stages, so its scripts' shebangs stay valid.
RUN python -m venv /opt/greenmesh
ENV PATH=/opt/greenmesh/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gen/python gen/python
COPY meshkit meshkit
COPY services services
COPY gateway gateway
COPY greenmesh_cli greenmesh_cli
# A regular (non-editable) install: the final stage needs only /opt/greenmesh, not the sources.
# Every dependency ships manylinux wheels, so no compiler is needed; then byte-compile once, here, because the
# final image's root filesystem is read-only.
COPY gen/descriptors gen/descriptors
# The descriptor set (with the protos' comments, for the gateway's OpenAPI descriptions) sits where
# gateway/openapi.py looks for it: <site-packages>/gen/descriptors, beside the installed packages.
RUN pip install . \
    && site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && mkdir -p "$site/gen" && cp -r gen/descriptors "$site/gen/" \
    && python -m compileall -q /opt/greenmesh/lib \
    && greenmesh --help > /dev/null

# ---- final: the runtime only, as a non-root user ----
FROM python:3.11-slim AS final
ENV PATH=/opt/greenmesh/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GREENMESH_DATA_DIR=/var/lib/greenmesh \
    GREENMESH_GRPC_HOST=0.0.0.0 \
    GREENMESH_HTTP_HOST=0.0.0.0
# pip, setuptools and wheel are not needed at run time.
RUN groupadd --system --gid 10001 greenmesh \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/greenmesh --no-create-home \
       --shell /usr/sbin/nologin greenmesh \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/greenmesh \
    && (python -m pip uninstall -y pip setuptools wheel || true)
COPY --from=build /opt/greenmesh /opt/greenmesh
# Numeric, so Kubernetes can verify runAsNonRoot.
USER 10001:10001
WORKDIR /var/lib/greenmesh
# gateway gRPC + HTTP, registry, flows, energy
EXPOSE 50050 8080 50051 50052 50053
ENTRYPOINT ["greenmesh"]
CMD ["serve", "gateway"]
