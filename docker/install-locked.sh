#!/bin/sh
# install-locked.sh LOCKFILE LOCKFILE_SHA256 PYTHON_VERSION SYSTEM_SITE_PACKAGES(0|1)
#
# Creates the virtual environment /opt/venv and installs exactly the locked packages into it:
# hashes required, no dependency resolution, wheels only. Also writes /opt/bench/pip, the pip
# that installs into that environment (used once more for the harness itself).
# Run by both Dockerfiles; nothing here depends on the flavour except the arguments.
set -eu
lock="${1:?lockfile}"
expected_sha="${2:?lockfile sha256}"
want_python="${3:?python version of the lock}"
system_site="${4:?0 or 1}"
venv=/opt/venv

# The image stamps BENCH_LOCKFILE_SHA256 from the Dockerfile's ARG: refuse to build an image
# whose stamp would not describe the lock it really carries.
actual_sha="$(sha256sum "$lock" | cut -d' ' -f1)"
if [ "$actual_sha" != "$expected_sha" ]; then
    echo "$lock has sha256 $actual_sha but the Dockerfile stamps $expected_sha:" \
         "run 'python scripts/lock.py' and rebuild" >&2
    exit 1
fi

have_python="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$have_python" != "$want_python" ]; then
    echo "$lock is locked for Python $want_python but the base image's python3 is" \
         "$have_python: use the base image this flavour was locked for" >&2
    exit 1
fi

venv_options=""
if [ "$system_site" = 1 ]; then
    # GPU flavour: the TensorRT Python bindings live in the base image's site-packages.
    venv_options="--system-site-packages"
fi
if python3 -m venv $venv_options "$venv" 2>/tmp/venv.err; then
    printf '#!/bin/sh\nexec %s/bin/python -m pip "$@"\n' "$venv" > /opt/bench/pip
else
    # Debian/Ubuntu pythons without the python3-venv package lack ensurepip: make the
    # environment without pip and drive it with the base image's own pip (pip >= 22.3).
    cat /tmp/venv.err >&2
    rm -rf "$venv"
    python3 -m venv --without-pip $venv_options "$venv"
    python3 -m pip --version
    printf '#!/bin/sh\nexec python3 -m pip --python %s/bin/python "$@"\n' "$venv" > /opt/bench/pip
fi
rm -f /tmp/venv.err
chmod 755 /opt/bench/pip

# A base image's pip constraint file (NGC images carry one) would fight the lock.
unset PIP_CONSTRAINT
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    # The system store, which holds the optional extra CA certificates (install-ca-certs.sh).
    export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
fi
/opt/bench/pip install --progress-bar off --require-hashes --no-deps --only-binary :all: -r "$lock"
if [ "$system_site" = 0 ]; then
    # Only a self-contained environment can be checked: with system site-packages pip would
    # also judge the base image's own packages.
    /opt/bench/pip check
fi
