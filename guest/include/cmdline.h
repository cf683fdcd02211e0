/* Boot command line: space-separated key=value words. */
#ifndef GV_CMDLINE_H
#define GV_CMDLINE_H
#include <stddef.h>

/*
 * Copies the value of the first `key=value` word of cmdline[0..len) into out
 * (NUL-terminated, cut to outsz-1 bytes). Returns the copied length, or -1
 * if the key is absent.
 */
int cmdline_get(const char *cmdline, size_t len, const char *key, char *out, size_t outsz);

#endif /* GV_CMDLINE_H */
