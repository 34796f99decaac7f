#!/bin/sh
# Install this host's key and the worker's public key, then run sshd in the foreground.
set -eu
install -m 0600 "/keys/${HOST_KEY_NAME}_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
install -d -m 0700 /root/.ssh
install -m 0600 /keys/id_ed25519.pub /root/.ssh/authorized_keys
# The live config is a copy, not a bind mount: the worker renames candidates over it.
[ -f /etc/dhcp/dhcpd.conf.seeded ] || {
  cp /samples/dhcpd.conf /etc/dhcp/dhcpd.conf && touch /etc/dhcp/dhcpd.conf.seeded; }
exec /usr/sbin/sshd -D -e -o PasswordAuthentication=no -o PermitRootLogin=prohibit-password \
  -o HostKey=/etc/ssh/ssh_host_ed25519_key
