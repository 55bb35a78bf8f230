/* arvc.h is a C header: this file is compiled as C99 (ctest runs it) and uses the API from C, with no
 * plan: the version, the status strings, and misuse answered with status codes. */
#include <arvc.h>

#include <stdio.h>
#include <string.h>

int main(void) {
  int failures = 0;
  arvc_session *s = NULL;
  arvc_options options = arvc_options_default();
  arvc_info info;
  const char *description = "";
  memset(&info, 0, sizeof info);
  info.size = sizeof info;
  if (options.size != sizeof(arvc_options)) ++failures;
  if (arvc_open(NULL, &options, &s) != ARVC_ERR_INVALID_ARGUMENT || s != NULL) ++failures;
  if (strstr(arvc_last_error(), "plan_dir") == NULL) ++failures;
  if (arvc_open("/nonexistent/plan", &options, &s) != ARVC_ERR_PLAN) ++failures;
  if (arvc_get_info(s, &info) != ARVC_ERR_INVALID_ARGUMENT) ++failures;
  if (strcmp(arvc_status_string(ARVC_ERR_BUFFER_TOO_SMALL), "buffer too small") != 0) ++failures;
  if (arvc_plan_describe(NULL, 0, &description) != ARVC_ERR_INVALID_ARGUMENT || description != NULL) ++failures;
  if (arvc_plan_describe("/nonexistent/plan", 0, &description) != ARVC_ERR_PLAN) ++failures;
  arvc_close(NULL);
  printf("arvc %s from C: %s\n", arvc_version(), failures ? "FAILED" : "ok");
  return failures != 0;
}
