# shellcheck shell=sh
# Sourced before every cargo step of the image builds. target-cpu=native
# (.cargo/config.toml) would tie an image to the build host's CPU, so this
# picks a portable level per architecture: on x86-64 the level CPU_LEVEL
# names (x86-64-v3, AVX2, by default; x86-64-v4 for AVX-512), elsewhere the
# architecture's generic target. The dependencies and Blaze must see the
# same flags, or cargo rebuilds the cached dependencies.
# jemalloc (the allocator) bakes the page size of the build host in: arm64
# servers run 4 KiB or 64 KiB pages (and buildx may build on either), so
# arm64 builds assume 64 KiB, which runs on both.
case "$(uname -m)" in
  x86_64) RUSTFLAGS="-C target-cpu=${CPU_LEVEL:-x86-64-v3}" ;;
  aarch64)
    RUSTFLAGS=""
    JEMALLOC_SYS_WITH_LG_PAGE=16
    export JEMALLOC_SYS_WITH_LG_PAGE
    ;;
  *) RUSTFLAGS="" ;;
esac
export RUSTFLAGS
