# shellcheck shell=sh
# Sourced before every cargo step of the image builds. target-cpu=native
# (.cargo/config.toml) would tie an image to the build host's CPU, so this
# picks a portable level per architecture: on x86-64 the level CPU_LEVEL
# names (x86-64-v3, AVX2, by default; x86-64-v4 for AVX-512), elsewhere the
# architecture's generic target. The dependencies and Blaze must see the
# same flags, or cargo rebuilds the cached dependencies.
case "$(uname -m)" in
  x86_64) RUSTFLAGS="-C target-cpu=${CPU_LEVEL:-x86-64-v3}" ;;
  *) RUSTFLAGS="" ;;
esac
export RUSTFLAGS
