# detbench-harness, GPU flavour: NVIDIA's TensorRT image (CUDA 13.0, TensorRT 10.14) + the locked
# Python packages (PyPI's CUDA-13 torch, onnxruntime-gpu 1.31, rfdetr) + the harness.
#
#   docker compose build bench            (or: docker build -t detbench-harness:gpu .)
#   docker compose run --rm bench         the GPU quickstart (plans/quickstart-gpu.yaml)
#   docker compose run --rm bench plans/x.yaml
#
# The CPU flavour is Dockerfile.cpu. Both files share everything below the "shared" line
# (tests/test_container_static.py checks it). Versions of the base image: docker/GPU_IMAGE.md.

# ---- flavour: GPU ----
# Pinned base image. UNVERIFIED DIGEST: no registry is reachable where this file was written,
# so the default names the tag only; scripts/pin-base-image.sh gpu resolves the digest on a
# machine that can pull and rewrites this line and BASE_IMAGE_DIGEST (docker/GPU_IMAGE.md).
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.11-py3
FROM ${BASE_IMAGE}

ARG BASE_IMAGE
# sha256:... of BASE_IMAGE; stamped as BENCH_BASE_IMAGE_DIGEST ("unpinned" when empty).
ARG BASE_IMAGE_DIGEST=""
ARG FLAVOUR=gpu
# Python of the base image that lockfiles/gpu.txt was resolved for.
ARG LOCK_PYTHON=3.12
# The TensorRT release the lock's onnxruntime-gpu TensorRT execution provider is built for, and
# that native TensorRT uses: the build stops (check-base.sh) on a base image with another.
ARG BASE_TENSORRT=10.14
# sha256 of lockfiles/gpu.txt, written by scripts/lock.py and re-checked during the build.
ARG LOCKFILE_SHA256=60492de2b391188c1f68c0ee93816d2549dd3795f3ec95ba3ded010045c92a53
# TensorRT's Python bindings live in the base image's site-packages: the venv must see them.
ARG VENV_SYSTEM_SITE_PACKAGES=1
# `docker compose run --rm bench` with no plan: the quickstart on the GPU, not bench's CPU one.
ARG DEFAULT_PLAN=/opt/bench/plans/quickstart-gpu.yaml

# ---- shared: everything below is identical in Dockerfile and Dockerfile.cpu ----
ARG BENCH_UID=1000
ARG BENCH_GID=1000

# Optional extra CA certificates (corporate proxies): docker/extra-ca-certs/README.md.
COPY docker/extra-ca-certs/ /usr/local/share/ca-certificates/bench-extra/
COPY docker/check-base.sh docker/install-ca-certs.sh docker/install-locked.sh /opt/bench/docker/
RUN /opt/bench/docker/check-base.sh "${BASE_IMAGE}" "${BASE_IMAGE_DIGEST}" "${BASE_TENSORRT}" \
    && /opt/bench/docker/install-ca-certs.sh /usr/local/share/ca-certificates/bench-extra

# Dependencies: exactly the lock, hashes required, no resolution, wheels only. This layer
# changes only with the lock, so editing the harness does not re-download torch.
COPY lockfiles/${FLAVOUR}.txt /opt/bench/lockfiles/${FLAVOUR}.txt
RUN /opt/bench/docker/install-locked.sh /opt/bench/lockfiles/${FLAVOUR}.txt \
        "${LOCKFILE_SHA256}" "${LOCK_PYTHON}" "${VENV_SYSTEM_SITE_PACKAGES}"

# The harness itself: no dependencies (all in the lock), no index, no build isolation (its
# build requirements setuptools and wheel are in the lock as well).
COPY docker/add-user.sh docker/entrypoint.sh /opt/bench/docker/
COPY plans/quickstart-gpu.yaml /opt/bench/plans/
COPY pyproject.toml README.md /opt/bench/src/
COPY harness/ /opt/bench/src/harness/
RUN /opt/bench/pip install --no-deps --no-index --no-build-isolation --no-cache-dir \
        /opt/bench/src \
    && rm -rf /opt/bench/src \
    && /opt/bench/docker/add-user.sh "${BENCH_UID}" "${BENCH_GID}"

# Declared this late on purpose: the classic builder keys every later RUN on the build
# arguments declared before it, and a new commit must not re-install the dependencies.
ARG IMAGE_NAME=detbench-harness
ARG IMAGE_TAG=${FLAVOUR}
# The harness commit and whether the tree had local changes (scripts/build-image.sh passes
# both; "unknown" when built without them).
ARG GIT_COMMIT=unknown
ARG GIT_DIRTY=unknown
# Read by the harness's environment capture (harness/environment): what this image is.
ENV BENCH_IMAGE_NAME=${IMAGE_NAME} \
    BENCH_IMAGE_TAG=${IMAGE_TAG} \
    BENCH_IMAGE_FLAVOUR=${FLAVOUR} \
    BENCH_BASE_IMAGE=${BASE_IMAGE} \
    BENCH_BASE_IMAGE_DIGEST=${BASE_IMAGE_DIGEST:-unpinned} \
    BENCH_LOCKFILE_SHA256=${LOCKFILE_SHA256} \
    BENCH_GIT_COMMIT=${GIT_COMMIT} \
    BENCH_GIT_DIRTY=${GIT_DIRTY} \
    BENCH_DEFAULT_PLAN=${DEFAULT_PLAN} \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    HOME=/home/bench \
    RF_HOME=/work/weights \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.title="${IMAGE_NAME}" \
      org.opencontainers.image.description="Reproducible latency and accuracy benchmarks for exported object detectors" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      org.opencontainers.image.base.digest="${BASE_IMAGE_DIGEST}" \
      io.detbench.flavour="${FLAVOUR}" \
      io.detbench.lockfile.sha256="${LOCKFILE_SHA256}"

USER ${BENCH_UID}:${BENCH_GID}
# compose mounts the project folder here (read-only) and reports/, artifacts/, weights/ over it
# (read-write), so a plan anywhere in the project and the paths in it resolve as they do natively.
WORKDIR /work
# `bench "$@"`, after checking that the folders a run writes are writable and that the plan is
# there, with an explanation instead of a traceback when not (docker/entrypoint.sh).
ENTRYPOINT ["/opt/bench/docker/entrypoint.sh"]
# No arguments: the flavour's default plan (DEFAULT_PLAN), else bench's bundled quickstart.
CMD []
