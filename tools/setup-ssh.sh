#!/bin/sh
# What the SSH device layer's tests need beyond pip: an OpenSSH server and client (the tests start
# their own sshd on 127.0.0.1, never the system service) and iproute2 (network namespaces, root).
# Idempotent: when everything is there it only checks and returns.
set -eu
need=""
[ -x /usr/sbin/sshd ] || need="$need openssh-server"
command -v ssh-keygen >/dev/null 2>&1 || need="$need openssh-client"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
if [ -n "$need" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing:$need: run as root, or: sudo apt-get install -y$need" >&2
        exit 2
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need
fi
if [ "$(id -u)" = 0 ]; then
    mkdir -p /run/sshd  # sshd's privilege-separation folder
fi
echo "ssh set-up ok: $(/usr/sbin/sshd -V 2>&1 | head -n 1 || true)"
