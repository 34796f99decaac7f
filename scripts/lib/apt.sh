# shellcheck shell=bash
# Sourced by scripts/setup and scripts/broker (bash): SUDO, and apt_install.
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Install Debian packages without starting any service they ship (dhcpd, sshd, rabbitmq):
# invoke-rc.d asks policy-rc.d, and 101 means "not now". Services are started by us, or never.
# A policy-rc.d already there (container images often ship one) is put back afterwards.
apt_install() {
  local policy=/usr/sbin/policy-rc.d rc=0
  $SUDO apt-get update -qq
  if [ -e "$policy" ]; then $SUDO mv "$policy" "$policy.dfw-saved"; fi
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null || rc=$?
  $SUDO rm -f "$policy"
  if [ -e "$policy.dfw-saved" ]; then $SUDO mv "$policy.dfw-saved" "$policy"; fi
  return "$rc"
}

