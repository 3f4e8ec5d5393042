# packaging/deps.sh — sourced by tests/run and packaging/dev-run: installs the build and
# test dependencies that are missing, with apt-get, on Debian 12 (and derivatives).
# Installs only what dpkg-query reports as absent; never upgrades or removes anything.
# Defines smarthost_install_deps; has no effect until it is called.

SMARTHOST_DEPS=(
    # build
    cmake make gcc clang pkg-config libclang-rt-14-dev
    libuv1-dev libgnutls28-dev libsasl2-dev libsasl2-modules libsqlite3-dev
    libc-ares-dev libcrypt-dev libinih-dev libjansson-dev libcmocka-dev
    # integration tests and the dev run: TLS tools, real clients, Debian's python3
    gnutls-bin openssl ca-certificates swaks libnet-ssleay-perl msmtp curl python3 sqlite3
    # the relay test world: a DNS server for the test zones
    python3-dnslib
    # package tests: build the .deb and .rpm, lint, verify the unit, run it in a netns
    dpkg-dev debhelper lintian rpm fakeroot systemd iproute2 util-linux man-db
)

smarthost_install_deps() {
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "deps: not a Debian system; install the equivalents of: ${SMARTHOST_DEPS[*]}" >&2
        return 0
    fi
    local missing=() pkg
    for pkg in "${SMARTHOST_DEPS[@]}"; do
        if ! dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "deps: missing packages: ${missing[*]}" >&2
        echo "deps: run as root, or: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
        return 1
    fi
    echo "deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
}
