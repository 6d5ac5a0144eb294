#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, to try (and test) the slurm executor for real:
# installs Debian's slurm-wlm and munge when missing (needs root and apt), writes a single-node
# slurm.conf (this host, all its CPUs, one partition "debug"), starts munged, slurmctld and
# slurmd, and waits until the node is idle. Idempotent: daemons already running are kept.
#
#   sudo bash scripts/slurm-one-node.sh      # then: mtlbench run --executor slurm --partition debug --gpus 0
set -euo pipefail
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge
fi
host=$(hostname -s)
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))  # MB, leaving some to the system
mkdir -p /etc/slurm /etc/munge /run/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown -R munge:munge /etc/munge /run/munge
chmod 400 /etc/munge/munge.key
cat > /etc/slurm/slurm.conf <<CONF
# written by mtlbench's scripts/slurm-one-node.sh: one node, one partition
ClusterName=mtlbench
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# a cancelled or requeued job's processes get SIGKILL 5 s after SIGTERM (SLURM's default: 30 s;
# submitit ignores SIGTERM, so this is how long a killed cell keeps running)
KillWait=5
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
running=$(pgrep -x slurmctld >/dev/null && echo yes || true)
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
[ -n "$running" ] && scontrol reconfigure  # a running cluster reads the config written above
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 1 60); do
  if sinfo -h -o "%T" 2>/dev/null | grep -qx idle; then
    echo "slurm: node $host idle ($cpus CPUs, partition debug)"
    exit 0
  fi
  sleep 1
done
echo "slurm: node $host did not become idle in 60 s:" >&2
sinfo >&2 || true
tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
