#!/bin/sh
# One-shot: the worker's client key, each host's host key, and the worker's known_hosts.
set -eu
cd /keys
[ -f id_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -C dhcp-failover-worker -f id_ed25519
: > known_hosts.new
for host in dhcp1 dhcp2; do
  [ -f "${host}_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "${host}_host_ed25519_key"
  echo "${host}.example.net,${host} $(cut -d' ' -f1,2 "${host}_host_ed25519_key.pub")" >> known_hosts.new
done
mv known_hosts.new known_hosts
# The worker runs as nobody (65534 in the Debian-based image): only it may read its key.
chown 65534:65534 id_ed25519
chmod 0600 id_ed25519
chmod 0644 known_hosts id_ed25519.pub
