#!/usr/bin/env bash
# Copy this checkout to every worker of every node and install it with JAX for TPU.
#   launch/tpu_install.sh --name dept --zone us-central2-b [--slices N] [--dry-run]
source "$(dirname "$0")/common.sh"
usage() { echo "usage: $0 [common flags]"; usage_common; }
parse_common "$@"
mapfile -t G < <(gcloud_common)
TARBALL=/tmp/dept_jax_src.tgz
run git -C "$REPO_DIR" archive --format=tar.gz -o "$TARBALL" HEAD
INSTALL='rm -rf ~/dept_jax && mkdir -p ~/dept_jax && tar xzf ~/dept_jax_src.tgz -C ~/dept_jax && python3 -m venv ~/venv && ~/venv/bin/pip install -q -U pip && ~/venv/bin/pip install -q "jax[tpu]>=0.10.1,<0.11" -e ~/dept_jax'
for node in $(nodes); do
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$node:~/dept_jax_src.tgz" "${G[@]}" --worker=all
  run gcloud compute tpus tpu-vm ssh "$node" "${G[@]}" --worker=all --command="$INSTALL"
done
