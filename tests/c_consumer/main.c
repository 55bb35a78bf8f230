#include <arvc.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
  arvc_session *s = NULL;
  arvc_options o = arvc_options_default();
  arvc_info info = {sizeof info};
  int32_t n = 0;
  o.threads = 2;
  if (argc != 3 || arvc_open(argv[1], &o, &s) || arvc_get_info(s, &info) || arvc_set_prompt(s, "a blue square", 5)) {
    fprintf(stderr, "%s\n", arvc_last_error());
    return 1;
  }
  uint8_t *rgb = malloc(info.max_block_bytes);
  if (arvc_next_block(s, rgb, info.max_block_bytes, &n)) return 1;
  FILE *f = fopen(argv[2], "wb");
  fwrite(rgb, 1, (size_t)n * info.width * info.height * 3, f);
  fclose(f);
  free(rgb);
  arvc_close(s);
  return 0;
}
