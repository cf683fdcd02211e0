/* Command-line parsing: find one key=value word; other words are ignored. */
#include "cmdline.h"

int cmdline_get(const char *cmdline, size_t len, const char *key, char *out, size_t outsz)
{
	size_t i = 0;
	while (i < len) {
		while (i < len && cmdline[i] == ' ')
			i++;
		size_t k = 0;
		while (key[k] && i + k < len && cmdline[i + k] == key[k])
			k++;
		if (!key[k] && i + k < len && cmdline[i + k] == '=') {
			i += k + 1;
			size_t n = 0;
			while (i < len && cmdline[i] != ' ' && cmdline[i]) {
				if (n + 1 < outsz)
					out[n++] = cmdline[i];
				i++;
			}
			if (outsz)
				out[n] = '\0';
			return (int)n;
		}
		while (i < len && cmdline[i] != ' ')
			i++;
	}
	return -1;
}
