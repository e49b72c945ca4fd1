#!/bin/sh
# Install the Debian (bookworm) packages that scripts/lm/corpus.py reads. The versions the committed
# corpus was built from are pinned below (also recorded in models/lm-domains/corpus/MANIFEST.json);
# set UNPINNED=1 to take whatever the mirror has (then `corpus.py --check` may report mismatches).
set -eu
PKGS="bible-kjv=4.38 bible-kjv-text=4.38 rust-src=1.63.0+dfsg1-2
libpython3.11-stdlib=3.11.2-6+deb12u6 libpython3.11-minimal=3.11.2-6+deb12u6
libc6-dev=2.36-9+deb12u14 linux-libc-dev=6.1.187-1
manpages-de=4.18.1-1 manpages-fr=4.18.1-1 manpages-es=4.18.1-1 groff-base=1.22.4-10"
if [ "${UNPINNED:-0}" = 1 ]; then PKGS=$(echo "$PKGS" | sed 's/=[^ ]*//g'); fi
apt-get update
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PKGS
