#!/usr/bin/env bash
# Makes a minimal Debian container image from the packages installed on this
# (Debian) host, for installing vmail's packages into without a registry:
#
#   deploy/pkg/debian-image.sh IMAGE
#
# It takes a few base packages (dpkg, bash, coreutils, passwd, util-linux,
# ...) and everything they depend on, copies exactly the files dpkg lists
# for them into a root filesystem, with a dpkg database that records just
# those packages, and `docker import`s it. The image is labelled with a hash
# of this script and the package list and versions, and is not rebuilt
# while that is unchanged. Prints nothing but errors; exits 1 when this is no Debian host.
set -euo pipefail
image=${1:?usage: deploy/pkg/debian-image.sh IMAGE}
die() {
    echo "deploy/pkg/debian-image.sh: $*" >&2
    exit 1
}
command -v dpkg-query >/dev/null 2>&1 || die "this host has no dpkg: it needs a Debian (or derived) host"
command -v docker >/dev/null 2>&1 || die "docker is missing"

BASE=(base-files base-passwd bash coreutils dash debianutils diffutils dpkg findutils grep gzip
    hostname libc-bin login mawk passwd sed tar util-linux libgcc-s1 procps)

installed() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed; }

# The closure over Depends and Pre-Depends, among installed packages; of
# alternatives (a | b), the first installed one.
declare -A seen=()
queue=()
for p in "${BASE[@]}"; do installed "$p" && queue+=("$p"); done
while ((${#queue[@]})); do
    p=${queue[0]}
    queue=("${queue[@]:1}")
    [[ -n ${seen[$p]:-} ]] && continue
    seen[$p]=1
    deps=$(dpkg-query -W -f='${Pre-Depends}, ${Depends}' "$p")
    IFS=',' read -ra groups <<<"$deps"
    for group in "${groups[@]}"; do
        IFS='|' read -ra alts <<<"$group"
        for alt in "${alts[@]}"; do
            name=$(awk '{ print $1 }' <<<"$alt" | sed 's/:.*//')
            [[ -z $name ]] && continue
            if installed "$name"; then
                [[ -z ${seen[$name]:-} ]] && queue+=("$name")
                break
            fi
        done
    done
done
packages=$(printf '%s\n' "${!seen[@]}" | sort)
sum=$({
    cat "$0"
    for p in $packages; do dpkg-query -W -f='${Package} ${Version} ${Architecture}\n' "$p"; done
} | sha256sum | cut -c1-16)
if [[ $(docker image inspect --format '{{ index .Config.Labels "vmail.debian" }}' "$image" 2>/dev/null) == "$sum" ]]; then
    exit 0
fi

rootfs=$(mktemp -d -t vmail-debian.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
# Merged /usr, as on the host.
for d in bin sbin lib lib64; do
    if [[ -L /$d ]]; then ln -s "$(readlink "/$d")" "$rootfs/$d"; fi
done
list=$rootfs.list
trap 'rm -rf "$rootfs" "$list"' EXIT
# Paths through the host's merged-/usr symlinks (/bin -> usr/bin, ...) are
# stored where the files really are.
merged=$(for d in bin sbin lib lib64 lib32 libx32; do if [[ -L /$d ]]; then printf "%s|" "$d"; fi; done)
for p in $packages; do
    dpkg-query -L "$p" 2>/dev/null | grep '^/' || true
done | sed -E "s#^/(${merged%|})(/|\$)#/usr/\1\2#" | sort -u | while read -r path; do
    if [[ -e $path || -L $path ]]; then echo "${path#/}"; fi
done >"$list"
# The links update-alternatives made (awk -> /etc/alternatives/awk, ...).
for f in /var/lib/dpkg/alternatives/*; do
    link=$(sed -n 2p "$f" | sed -E "s#^/(${merged%|})/#/usr/\1/#")
    if [[ -L $link ]]; then echo "${link#/}" >>"$list"; fi
done
tar -C / --no-recursion -cf - -T "$list" | tar -C "$rootfs" -xf - ||
    die "copying the packages' files failed"

# dpkg's database: only these packages.
db=$rootfs/var/lib/dpkg
mkdir -p "$db/info" "$db/updates" "$db/alternatives" "$rootfs/var/log" "$rootfs/var/cache" \
    "$rootfs/var/lib/misc" "$rootfs/tmp" "$rootfs/root" "$rootfs/home" "$rootfs/run" "$rootfs/etc/alternatives"
chmod 1777 "$rootfs/tmp"
: >"$db/available"
: >"$db/diversions"
: >"$db/statoverride"
for p in $packages; do
    dpkg-query -s "$p"
    echo
    for f in /var/lib/dpkg/info/"$p".* /var/lib/dpkg/info/"$p":*.*; do
        [[ -e $f ]] && cp -a "$f" "$db/info/"
    done
done >"$db/status"
cp -a /var/lib/dpkg/alternatives/. "$db/alternatives/" 2>/dev/null || true
cp -a /etc/alternatives/. "$rootfs/etc/alternatives/"
# A fresh account database (base-passwd's), not the host's users.
cp /usr/share/base-passwd/passwd.master "$rootfs/etc/passwd"
cp /usr/share/base-passwd/group.master "$rootfs/etc/group"
(cd "$rootfs/etc" && awk -F: '{ print $1 ":*:19000:0:99999:7:::" }' passwd >shadow &&
    awk -F: '{ print $1 ":*::" }' group >gshadow && chmod 640 shadow gshadow)
# What base-files' postinst makes rather than ships (login shells read it).
for f in profile motd; do
    [[ -f /usr/share/base-files/$f && ! -e $rootfs/etc/$f ]] && cp "/usr/share/base-files/$f" "$rootfs/etc/$f"
done
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"

tar -C "$rootfs" -cf - . | docker import \
    --change "LABEL vmail.debian=$sum" \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'CMD ["/bin/bash"]' \
    - "$image" >/dev/null || die "docker import failed"
