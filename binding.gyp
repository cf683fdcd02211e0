{
  "targets": [
    {
      "target_name": "gv_kvm",
      "sources": ["native/gv_kvm.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-O2"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
