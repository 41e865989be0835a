# shellcheck shell=bash
# Shared helpers for scripts/*.sh. Source it; do not run it.
# The sourcing script sets LOG_NAME before calling log/die.

log()  { printf '%s: %s\n' "${LOG_NAME:-kbridge}" "$*" >&2; }
die()  { log "ERROR: $*"; exit 1; }

# human_duration SECONDS -> "1m05s" / "42s"
human_duration() {
  local s=$1
  if (( s >= 60 )); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

# port_open PORT -> 0 when something accepts TCP connections on 127.0.0.1:PORT
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pid_alive PID
pid_alive() {
  [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null
}

# pid_cmdline_has PID STRING -> 0 when /proc/PID/cmdline contains STRING
pid_cmdline_has() {
  [[ -r /proc/$1/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$2"
}

# wait_pid_gone PID SECONDS -> 0 when the process is gone within SECONDS
wait_pid_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while pid_alive "$pid"; do
    # a zombie child of ours counts as gone
    if [[ -r /proc/$pid/stat ]] && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]]; then
      return 0
    fi
    (( SECONDS >= deadline )) && return 1
    sleep 0.2
  done
  return 0
}

# terminate PID SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL (and wait
# 10 s more); dies if the process is still there.
terminate() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  wait_pid_gone "$pid" "$2" && return 0
  log "pid $pid still running after ${2}s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait_pid_gone "$pid" 10 || die "could not kill pid $pid"
}

# apt_install PKG... : installs Debian packages, running `apt-get update` at most
# once per run (KBRIDGE_APT_UPDATED is exported so child scripts see it) and only
# when the plain install cannot find the packages.
apt_install() {
  (( $# )) || return 0
  local sudo=()
  if (( EUID != 0 )); then
    command -v sudo >/dev/null || die "need root (or sudo) to apt-get install $*"
    sudo=(sudo)
  fi
  # Keep Debian's postinst from starting system-wide daemons (e.g. redis on 6379).
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]]; then
    "${sudo[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy" && made_policy=1
  fi
  local rc=0
  export DEBIAN_FRONTEND=noninteractive
  log "installing Debian packages: $*"
  if [[ -z ${KBRIDGE_APT_UPDATED:-} ]] && ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    "${sudo[@]}" apt-get update -qq && export KBRIDGE_APT_UPDATED=1
  fi
  if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
    if [[ -z ${KBRIDGE_APT_UPDATED:-} ]]; then
      log "install failed with the current package lists; running apt-get update once"
      "${sudo[@]}" apt-get update -qq && export KBRIDGE_APT_UPDATED=1
      "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
    else
      rc=1
    fi
  fi
  (( made_policy )) && "${sudo[@]}" rm -f "$policy"
  (( rc == 0 )) || die "apt-get install $* failed"
}

# ensure_cmds CMD:PKG ... : installs PKG for every CMD not on PATH (one apt run)
ensure_cmds() {
  local pair missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  (( ${#missing[@]} )) || return 0
  apt_install "${missing[@]}"
}

# register_instance KIND DATA_DIR PORT : remembers a started service so that
# scripts/test.sh can stop it at exit (only when KBRIDGE_REGISTRY is set).
register_instance() {
  [[ -n ${KBRIDGE_REGISTRY:-} ]] || return 0
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$KBRIDGE_REGISTRY" 2>/dev/null || true
}
