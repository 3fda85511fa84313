#!/usr/bin/env bash
# make deb: builds dist/gcn-punch_VERSION_ARCH.deb with the binary, the
# systemd units, the docs and the man page, then checks it with dpkg-deb
# and (when installed) lintian. Fails on any lintian error or warning.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-0.1.0}
ARCH=$(dpkg --print-architecture 2>/dev/null || go env GOARCH)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
pkg="$root/gcn-punch"
mkdir -p "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/share/man/man1" "$pkg/usr/share/doc/gcn-punch" \
  "$pkg/usr/lib/systemd/system"

CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -buildid= -X main.version=$VERSION" -o "$pkg/usr/bin/gcn-punch" ./cmd/gcn-punch
ln -s gcn-punch "$pkg/usr/bin/gcn-heartbeat"

gzip -9n -c docs/gcn-punch.1 >"$pkg/usr/share/man/man1/gcn-punch.1.gz"
ln -s gcn-punch.1.gz "$pkg/usr/share/man/man1/gcn-heartbeat.1.gz"
for f in README.md docs/protocol.md docs/store.md docs/security.md docs/operations.md; do
  install -m 0644 "$f" "$pkg/usr/share/doc/gcn-punch/$(basename "$f")"
done
cat >"$root/changelog" <<CL
gcn-punch ($VERSION) unstable; urgency=medium

  * Release $VERSION: push notifications over UDP through NATs, SSH
    registration, install and uninstall for server and client.

 -- gcn-punch developers <gcn-punch@example.invalid>  $(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
CL
gzip -9n -c "$root/changelog" >"$pkg/usr/share/doc/gcn-punch/changelog.gz"
cat >"$pkg/usr/share/doc/gcn-punch/copyright" <<'CP'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: gcn-punch

Files: *
Copyright: 2026 gcn-punch developers
License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the "Software"), to deal
 in the Software without restriction, including without limitation the rights
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in all
 copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
 SOFTWARE.
CP

# The rendezvous's unit, as the "git" user on the default store, not enabled
# by the package (`gcn-punch install server` sets a repository up). One
# source: the same text `install server` writes. The client's user unit is
# written by `gcn-punch install client`, which knows the clones.
"$pkg/usr/bin/gcn-punch" install server --print-unit --user git --store /var/git-chat-notif-db \
  --listen :3478 --binary /usr/bin/gcn-punch >"$pkg/usr/lib/systemd/system/gcn-punch-rendezvous.service"
chmod 0644 "$pkg/usr/lib/systemd/system/gcn-punch-rendezvous.service"

size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<CTRL
Package: gcn-punch
Version: $VERSION
Architecture: $ARCH
Maintainer: gcn-punch developers <gcn-punch@example.invalid>
Installed-Size: $size
Depends: git
Recommends: openssh-client
Suggests: openssh-server, dbus
Section: vcs
Priority: optional
Homepage: https://gcn-punch.example.invalid
Description: git push notifications over UDP through NATs
 gcn-punch tells the followers of a self-hosted git repository the moment
 someone pushes, without polling and without opening a port on their home
 routers. A rendezvous daemon on the git server answers STUN, keeps the
 registry of clients and sends each notification, sealed with NaCl box,
 down the path the client's NAT holds open. Clients register through the
 SSH access they already have for git.
 .
 This package serves both sides: the server (rendezvous, post-receive
 hook, git-shell command) and the client (daemon, systemd user unit).
CTRL
find "$pkg" -type d -exec chmod 0755 {} +
(cd "$pkg" && find usr -type f -exec md5sum {} + | sort -k2) >"$pkg/DEBIAN/md5sums"
chmod 0755 "$pkg/usr/bin/gcn-punch"

mkdir -p dist
out="dist/gcn-punch_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$out" >/dev/null
dpkg-deb --info "$out"
dpkg-deb --contents "$out"
if command -v lintian >/dev/null; then
  lintian --fail-on error,warning --suppress-tags-from-file scripts/lintian-suppress "$out"
  echo "lintian: no errors or warnings"
else
  echo "lintian not installed: not checked (CI installs it)"
fi
echo "built $out"
