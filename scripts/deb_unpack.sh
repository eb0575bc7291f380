# Sourced (not run) by scripts/install_tools.sh and scripts/install_etcd.sh:
# logging helpers and one way to take a binary out of a Debian package
# without installing the package (installing `prometheus` or `etcd-server`
# would register, and where an init system runs start, a server).
#
# The sourcing script sets LOG_NAME (its name in messages) first.

say() { echo "${LOG_NAME}: $*"; }
die() {
    echo "${LOG_NAME}: error: $*" >&2
    exit 1
}

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "'$*' needs root and sudo is not available"
    fi
}

# deb_unpack PACKAGE MEMBER DEST WORKDIR: download PACKAGE's .deb into WORKDIR
# (running `apt-get update` once if the lists do not know it or the download
# fails), unpack it there and copy its file MEMBER (e.g. usr/bin/etcd) to
# DEST, executable. Sets DEB_FILE to the .deb's name.
deb_unpack() {
    local package="$1" member="$2" dest="$3" work="$4"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: $member comes from Debian's $package package"
    command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found"
    if ! apt-cache show "$package" >/dev/null 2>&1; then
        say "package lists do not know $package; running apt-get update"
        as_root apt-get update -qq
    fi
    local apt_opts=()
    # As root, apt drops to the _apt user to download, which cannot write into
    # our private temp directory; keep root for this download instead.
    [[ "$(id -u)" -eq 0 ]] && apt_opts=(-o APT::Sandbox::User=root)
    say "downloading Debian's $package package (not installing it)"
    if ! (cd "$work" && apt-get "${apt_opts[@]}" download -qq "$package"); then
        say "download failed (stale package lists?); running apt-get update and retrying"
        as_root apt-get update -qq
        (cd "$work" && apt-get "${apt_opts[@]}" download -qq "$package") ||
            die "apt-get download $package failed"
    fi
    local debs=("$work/$package"_*.deb)
    [[ -f "${debs[0]}" ]] || die "no .deb downloaded"
    DEB_FILE="$(basename "${debs[0]}")"
    dpkg-deb -x "${debs[0]}" "$work/deb-$package"
    [[ -x "$work/deb-$package/$member" ]] || die "$DEB_FILE has no $member"
    install -m 0755 "$work/deb-$package/$member" "$dest"
}
