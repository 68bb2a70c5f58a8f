#!/usr/bin/env bash
# Builds the Debian packages vmail and vmail-auth from binaries already
# built, with plain dpkg-deb (no cargo-deb, nothing to install):
#
#   deploy/pkg/build.sh [--bin-dir DIR] [--out DIR] [--compress xz|gzip|none]
#
#   --bin-dir   where vmail, vmail-auth and vmail-devnet are (default
#               target/release; target/debug works too)
#   --out       where to write the .deb files (default target/debian)
#   --compress  dpkg-deb's compression (default xz; the package test uses none)
#
# vmail       /usr/bin/vmail and vmail-devnet (`vmail demo`, `vmail testnet`),
#             vmail-node@.service (a user's daemon), /etc/default/vmail-node,
#             /etc/profile.d/vmail-node.sh
# vmail-auth  /usr/bin/vmail-auth, vmail-auth.service, /etc/default/vmail-auth,
#             the vmail-auth system user (made by its postinst)
# Both: man pages (`PROGRAM man DIR`) and bash, zsh and fish completions
# (`PROGRAM completions SHELL`) when the binaries have those subcommands.
# Prints the paths of the two packages.
set -euo pipefail
PKG_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT_DIR=$(cd "$PKG_DIR/../.." && pwd)
bin_dir=$ROOT_DIR/target/release
out=$ROOT_DIR/target/debian
compress=xz

die() {
    echo "deploy/pkg/build.sh: $*" >&2
    exit 1
}
while (($#)); do
    case $1 in
        --bin-dir) bin_dir=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --compress) compress=$2; shift 2 ;;
        *) sed -n '5,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
for tool in dpkg-deb strip objdump gzip; do
    command -v $tool >/dev/null 2>&1 || die "$tool is missing (Debian: apt-get install dpkg-dev binutils gzip)"
done
bin_dir=$(cd "$bin_dir" 2>/dev/null && pwd) || die "no directory $bin_dir: build the binaries (cargo build --release)"
for bin in vmail vmail-auth vmail-devnet; do
    [[ -x $bin_dir/$bin ]] || die "$bin_dir/$bin is missing: cargo build --release (or pass --bin-dir)"
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=$(awk -F'"' '/^\[workspace.package\]/ { p = 1 } p && $1 ~ /^version *= */ { print $2; exit }' "$ROOT_DIR/Cargo.toml")
[[ -n $version ]] || die "cannot read the workspace version from Cargo.toml"
arch=$(dpkg --print-architecture)

# The newest glibc symbol version the binaries use: the libc6 they need.
glibc_of() {
    objdump -T "$@" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -1
}

# stage PACKAGE BINARY...: a package tree with the binaries (debug info
# stripped, symbols kept for backtraces), their man pages and completions.
stage() {
    local pkg=$1 dir=$WORK/$1 bin
    shift
    mkdir -p "$dir/DEBIAN" "$dir/usr/bin" "$dir/usr/share/doc/$pkg"
    for bin in "$@"; do
        strip --strip-debug -o "$dir/usr/bin/$bin" "$bin_dir/$bin"
        chmod 755 "$dir/usr/bin/$bin"
    done
    # Man pages and completions of the programs users run (not vmail-devnet).
    bin=$1
    if "$bin_dir/$bin" man --help >/dev/null 2>&1; then
        local man=$WORK/man-$bin
        mkdir -p "$man" "$dir/usr/share/man/man1"
        "$bin_dir/$bin" man "$man" >/dev/null || die "$bin man failed"
        local page
        for page in "$man"/*.1; do
            [[ -e $page ]] || die "$bin man wrote no *.1 page into $man"
            gzip -9n <"$page" >"$dir/usr/share/man/man1/$(basename "$page").gz"
        done
    else
        echo "note: $bin has no man subcommand yet: no man pages in $pkg" >&2
    fi
    if "$bin_dir/$bin" completions --help >/dev/null 2>&1; then
        mkdir -p "$dir/usr/share/bash-completion/completions" "$dir/usr/share/zsh/vendor-completions" \
            "$dir/usr/share/fish/vendor_completions.d"
        "$bin_dir/$bin" completions bash >"$dir/usr/share/bash-completion/completions/$bin" &&
            "$bin_dir/$bin" completions zsh >"$dir/usr/share/zsh/vendor-completions/_$bin" &&
            "$bin_dir/$bin" completions fish >"$dir/usr/share/fish/vendor_completions.d/$bin.fish" ||
            die "$bin completions failed"
    else
        echo "note: $bin has no completions subcommand yet: no completions in $pkg" >&2
    fi
    cat >"$dir/usr/share/doc/$pkg/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vmail
License: MIT OR Apache-2.0
COPYRIGHT
    [[ -f $ROOT_DIR/docs/OPERATIONS.md ]] && cp "$ROOT_DIR/docs/OPERATIONS.md" "$dir/usr/share/doc/$pkg/"
    install -m 644 "$ROOT_DIR/README.md" "$dir/usr/share/doc/$pkg/README.md"
}

# control PACKAGE DESCRIPTION...: DEBIAN/control, with Depends read off the
# binaries and Installed-Size measured.
control() {
    local pkg=$1 dir=$WORK/$1 glibc size
    shift
    glibc=$(glibc_of "$dir"/usr/bin/*)
    size=$(du -sk --exclude=DEBIAN "$dir" | cut -f1)
    {
        echo "Package: $pkg"
        echo "Version: $version"
        echo "Architecture: $arch"
        echo "Maintainer: vmail developers <vmail@localhost>"
        echo "Installed-Size: $size"
        echo "Depends: libc6 (>= $glibc), libgcc-s1, passwd"
        echo "Section: net"
        echo "Priority: optional"
        echo "Description: $1"
        shift
        local line
        for line in "$@"; do echo " $line"; done
    } >"$dir/DEBIAN/control"
    (cd "$dir" && find etc -type f 2>/dev/null | sed 's|^|/|') >"$dir/DEBIAN/conffiles"
    [[ -s $dir/DEBIAN/conffiles ]] || rm "$dir/DEBIAN/conffiles"
}

build() {
    local pkg=$1 deb=$out/${1}_${version}_${arch}.deb
    # Package files are root's, whoever builds.
    dpkg-deb --root-owner-group -Z"$compress" --build "$WORK/$pkg" "$deb" >/dev/null ||
        die "dpkg-deb failed for $pkg"
    echo "$deb"
}

WORK=$(mktemp -d -t vmail-pkg.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------- vmail
stage vmail vmail vmail-devnet
d=$WORK/vmail
install -D -m 644 "$PKG_DIR/vmail/vmail-node@.service" "$d/lib/systemd/system/vmail-node@.service"
install -D -m 644 "$PKG_DIR/vmail/default" "$d/etc/default/vmail-node"
install -D -m 644 "$PKG_DIR/vmail/profile.sh" "$d/etc/profile.d/vmail-node.sh"
install -d -m 755 "$d/etc/vmail"
cat >"$d/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
SCRIPT
cat >"$d/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
SCRIPT
chmod 755 "$d/DEBIAN/postinst" "$d/DEBIAN/postrm"
control vmail "secure peer-to-peer voicemail: CLI and peer daemon" \
    "vmail leaves voicemail encrypted end to end and erasure-coded across" \
    "peers. This package has the vmail CLI, the peer daemon (vmail node run," \
    "one per user: systemctl enable --now vmail-node@USER) and vmail-devnet" \
    "(vmail demo, vmail testnet)."
build vmail

# ---------------------------------------------------------------- vmail-auth
stage vmail-auth vmail-auth
d=$WORK/vmail-auth
install -D -m 644 "$PKG_DIR/vmail-auth/vmail-auth.service" "$d/lib/systemd/system/vmail-auth.service"
install -D -m 644 "$PKG_DIR/vmail-auth/default" "$d/etc/default/vmail-auth"
cat >"$d/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd vmail-auth >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/vmail-auth \
            --shell /usr/sbin/nologin --comment "vmail auth server" vmail-auth
    fi
    install -d -o vmail-auth -g vmail-auth -m 0700 /var/lib/vmail-auth
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
fi
exit 0
SCRIPT
cat >"$d/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop vmail-auth.service >/dev/null 2>&1 || true
fi
exit 0
SCRIPT
cat >"$d/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
# The data directory holds the group's keys and database: it is never
# deleted here, not even on purge.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
SCRIPT
chmod 755 "$d/DEBIAN/postinst" "$d/DEBIAN/prerm" "$d/DEBIAN/postrm"
control vmail-auth "secure peer-to-peer voicemail: auth server" \
    "The vmail auth server: accounts (OPAQUE), user certificates and the" \
    "voicemail deposit log, replicated over a Raft group of servers." \
    "Make the data directory with vmail-auth init or join as the vmail-auth" \
    "user, then systemctl enable --now vmail-auth."
build vmail-auth
