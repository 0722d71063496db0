/* test_judge.c — unit tests of the judge protocol (common/judge.h) and the OpenAI client helpers
 * (common/openai.h): Python string semantics, template filling, reply handling per task,
 * analysis texts, CSV quoting, the report files, prompt sets (built-in and upstream). */
#include "judge.h"
#include "openai.h"
#include "testlib.h"
#include "util.h"
#include <jv.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void check_s(char *got, const char *want, int line) {
  t_checks++;
  if (!got || strcmp(got, want) != 0) {
    t_fails++;
    fprintf(stderr, "test_judge.c:%d: got \"%s\", want \"%s\"\n", line, got ? got : "(null)", want);
  }
  free(got);
}
#define CHECK_S(got, want) check_s((got), (want), __LINE__)

static void t_strings(void) {
  CHECK_S(usbx_py_strip("  \t x y \n"), "x y");
  CHECK_S(usbx_py_strip("\xe3\x80\x80" "abc\xc2\xa0"), "abc");          /* U+3000, U+00A0 */
  CHECK_S(usbx_py_strip(" \x1f x \xc2\x85"), "x");                      /* \x1f and U+0085 are Python whitespace */
  CHECK_S(usbx_py_strip(" \n\t "), "");
  CHECK_S(usbx_py_first_line("a\rb"), "a");
  CHECK_S(usbx_py_first_line("a\xe2\x80\xa8" "b"), "a");                /* U+2028 */
  CHECK_S(usbx_py_first_line("a\x1c" "b"), "a");
  CHECK_S(usbx_py_first_line("a\x0b" "b"), "a");
  CHECK_S(usbx_py_first_line("abc"), "abc");
  const char *names[2] = {"caption", "gt"}, *vals[2] = {"{x} }", "1"};
  char err[256];
  CHECK_S(usbx_pyformat("[{caption}] {{lit}} {gt}", names, vals, 2, err, sizeof err), "[{x} }] {lit} 1");
  CHECK(usbx_pyformat("{nope}", names, vals, 2, err, sizeof err) == NULL);
  CHECK(strstr(err, "unknown field {nope}") != NULL);
  CHECK(usbx_pyformat("a } b", names, vals, 2, err, sizeof err) == NULL);
  CHECK(usbx_pyformat("a { b", names, vals, 2, err, sizeof err) == NULL);
  CHECK(usbx_pyformat("{caption!r}", names, vals, 2, err, sizeof err) == NULL);
  CHECK_EQ_INT(usbx_task_parse("mapping"), USBX_TASK_MAPPING);
  CHECK_EQ_INT(usbx_task_parse("free"), -1);
  CHECK_EQ_INT(usbx_verdict_parse("IMAGE_NOT_FOUND"), USBX_V_NOT_FOUND);
  CHECK_EQ_INT(usbx_verdict_parse("yes"), -1);
}

static void stage1(usbx_task t, const char *content, int want_rc, const char *want_cap, const char *want_full, int line) {
  char *cap = NULL, *full = NULL;
  int rc = usbx_judge_stage1(t, content, &cap, &full);
  t_checks++;
  if (rc != want_rc || (want_rc >= 0 && (strcmp(cap, want_cap) != 0 || strcmp(full, want_full) != 0))) {
    t_fails++;
    fprintf(stderr, "test_judge.c:%d: stage1(%s, \"%s\") = %d \"%s\" \"%s\", want %d \"%s\" \"%s\"\n", line,
            usbx_task_name(t), content ? content : "(null)", rc, cap ? cap : "", full ? full : "", want_rc,
            want_cap ? want_cap : "", want_full ? want_full : "");
  }
  free(cap); free(full);
}
#define S1(t, c, rc, cap, full) stage1(t, c, rc, cap, full, __LINE__)

static void stage2(usbx_task t, const char *content, int want, int line) {
  char *ev = NULL;
  int rc = usbx_judge_stage2(t, content, &ev);
  t_checks++;
  if (rc != want) { t_fails++; fprintf(stderr, "test_judge.c:%d: stage2(\"%s\") = %d, want %d\n", line, content ? content : "(null)", rc, want); }
  free(ev);
}
#define S2(t, c, want) stage2(t, c, want, __LINE__)

static void t_replies(void) {
  const usbx_task M = USBX_TASK_MATH, P = USBX_TASK_MAPPING, K = USBX_TASK_KNOWLEDGE;
  /* math: the whole stripped reply is the caption; only a bare "Error" short-circuits */
  S1(M, "Caption: 3 apples\n", 1, "Caption: 3 apples", "Caption: 3 apples\n");
  S1(M, " error \n", 0, "Error", " error \n");
  S1(M, "Caption: Error", 1, "Caption: Error", "Caption: Error");
  S1(M, "", -1, NULL, NULL);
  S1(M, NULL, -1, NULL, NULL);
  S1(M, "  ", 1, "", "  ");
  /* mapping: "Object:\s*(.+)" on the stripped reply, "Object: Error" short-circuits too */
  S1(P, "Object: Error", 0, "Error", "Object: Error");
  S1(P, "ERROR", 0, "Error", "ERROR");
  S1(P, "Object:   mug  \nmore", 1, "mug", "Object:   mug  \nmore");
  S1(P, "a mug", 1, "a mug", "a mug");
  S1(P, "Object: \n\nbar", 1, "bar", "Object: \n\nbar");
  S1(P, "Object:\n  cup", 1, "cup", "Object:\n  cup");
  S1(P, "Object: \n Object: y", 1, "Object: y", "Object: \n Object: y");
  S1(P, "Object:   \n", 1, "Object:", "Object:   \n");
  S1(P, "", -1, NULL, NULL);
  /* knowledge: first line of the stripped reply; exactly "Reject" short-circuits */
  S1(K, "  Person: East Asian; black; kid; male\nNote", 1, "Person: East Asian; black; kid; male",
     "Person: East Asian; black; kid; male\nNote");
  S1(K, "Reject", 0, "Reject", "Reject");
  S1(K, " Reject \n", 0, "Reject", "Reject");
  S1(K, "Reject.", 1, "Reject.", "Reject.");
  S1(K, "reject", 1, "reject", "reject");
  S1(K, "Error", 1, "Error", "Error");
  S1(K, "  \n ", -1, NULL, NULL);
  S1(K, NULL, -1, NULL, NULL);
  /* the score regex: Score:\s*(YES|NO), IGNORECASE, searched */
  S2(M, "Score: YES", 1);
  S2(M, "**Score: no**", 0);
  S2(M, "score:\n\tYes", 1);
  S2(M, "Score:maybe\nScore: NO", 0);
  S2(M, "Scores: YES", -1);
  S2(M, "Score: YESTERDAY", 1);
  S2(M, "SCORE: nO", 0);
  S2(M, "Score: \xc5\xbf" "omething", -1);
  S2(M, "\xc5\xbf" "core: yes", 1);      /* IGNORECASE folds U+017F to s */
  S2(M, "", -1);
  S2(M, NULL, -1);
  S2(K, "  \n", -1);
  S2(M, "The answer is yes", -1);
  char *ev = NULL;
  CHECK_EQ_INT(usbx_judge_stage2(K, "  Score: YES \n", &ev), 1);
  CHECK_S(ev, "Score: YES");
  ev = NULL;
  CHECK_EQ_INT(usbx_judge_stage2(M, "  Score: YES \n", &ev), 1);
  CHECK_S(ev, "  Score: YES \n");
}

static void t_analysis(void) {
  CHECK_S(usbx_judge_analysis(USBX_TASK_MATH, "Caption: 2 cups", "Caption: 2 cups", "2 cups.", "**Score: YES**"),
          "Phase 1 - Image Captioning:\nCaption: 2 cups\n\nPhase 2 - Caption Evaluation:\nGenerated Caption: Caption: 2 cups\n"
          "Expected Answer: 2 cups.\n**Score: YES**");
  CHECK_S(usbx_judge_analysis(USBX_TASK_MAPPING, "Object: mug", "mug", "cup", "Score: YES"),
          "Phase 1 - Object Identification:\nObject: mug\n\nPhase 2 - Object Evaluation:\nIdentified Object: mug\n"
          "Expected Answer: cup\nScore: YES");
  CHECK_S(usbx_judge_analysis(USBX_TASK_KNOWLEDGE, "Fruit: apple", "Fruit: apple", "apples", "Score: YES"),
          "Phase 1 - Caption:\nFruit: apple\n\nPhase 2 - Evaluation:\nGenerated: Fruit: apple\nGT: apples\nScore: YES");
  CHECK_S(usbx_judge_analysis_short(USBX_TASK_MATH, "Error", "Error", "x"),
          "Phase 1 - Image Captioning:\nModel returned 'Error', skipping Phase 2.");
  CHECK_S(usbx_judge_analysis_short(USBX_TASK_MAPPING, "Object: Error", "Error", "x"),
          "Phase 1 - Object Identification:\nModel returned 'Error', skipping Phase 2.");
  CHECK_S(usbx_judge_analysis_short(USBX_TASK_KNOWLEDGE, "Reject", "Reject", "rose"),
          "Phase 1 - Caption:\nReject\n\nPhase 2 - Evaluation:\nGenerated: Reject\nGT: rose\nCaption=Reject => automatic NO");
  CHECK_S(usbx_judge_analysis_failed(USBX_TASK_MATH, 1, ""), "Error: Failed to generate image caption");
  CHECK_S(usbx_judge_analysis_failed(USBX_TASK_MATH, 2, "3 cats"), "Error: Failed to evaluate caption match\nGenerated Caption: 3 cats");
  CHECK_S(usbx_judge_analysis_failed(USBX_TASK_MAPPING, 1, ""), "Error: Failed to identify object");
  CHECK_S(usbx_judge_analysis_failed(USBX_TASK_MAPPING, 2, "mug"), "Error: Failed to evaluate match\nIdentified Object: mug");
  CHECK_S(usbx_judge_analysis_failed(USBX_TASK_KNOWLEDGE, 1, ""), "Error: caption failed");
  CHECK_S(usbx_judge_analysis_failed(USBX_TASK_KNOWLEDGE, 2, "x"), "Error: eval failed");
}

static void t_csv(void) {
  usbx_buf b = {0};
  usbx_buf_append(&b, "", 0);
  usbx_csv_field(&b, "plain");
  usbx_buf_append(&b, "|", 1);
  usbx_csv_field(&b, "a,b");
  usbx_buf_append(&b, "|", 1);
  usbx_csv_field(&b, "say \"hi\"");
  usbx_buf_append(&b, "|", 1);
  usbx_csv_field(&b, "two\nlines");
  usbx_buf_append(&b, "|", 1);
  usbx_csv_field(&b, "cr\r");
  usbx_buf_append(&b, "|", 1);
  usbx_csv_field(&b, "");
  CHECK_STR(b.data, "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"two\nlines\"|\"cr\r\"|");
  usbx_buf_free(&b);
  char p[32];
  struct { long c, t; const char *want; } v[] = {{2, 3, "66.67%"}, {1, 8, "12.50%"}, {0, 0, "0.00%"}, {5, 5, "100.00%"},
                                                 {1, 200, "0.50%"}, {1, 800, "0.12%"}, {2, 7, "28.57%"}};
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) { usbx_judge_pct(p, sizeof p, v[i].c, v[i].t); CHECK_STR(p, v[i].want); }
}

static char *S(const char *s) { return xstrdup(s); }

static void t_report(void) {
  char dir[] = "/tmp/usbx-test-judge-XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  char err[512], *log = NULL;
  /* math: two rows, one with a comma and newlines in Analysis */
  usbx_judge_row m[2] = {
    {USBX_TASK_MATH, S("1"), S("Draw 2 cups, please"), S("2 cups."), S("d/1.png"), S("2 cups"), S("A\nB"), NULL, USBX_V_YES, 1, 0},
    {USBX_TASK_MATH, S("2"), S("q"), S("3 cats"), S("d/2.png"), S(""), S("Image file not found"), NULL, USBX_V_NOT_FOUND, 0, 0},
  };
  CHECK_EQ_INT(usbx_judge_write_report(dir, USBX_TASK_MATH, m, 2, 1.234, &log, err, sizeof err), 0);
  char *csv_path = xasprintf("%s/evaluation_results.csv", dir), *log_path = xasprintf("%s/evaluation_results.log", dir);
  char *csv = usbx_read_file(csv_path, NULL), *lg = usbx_read_file(log_path, NULL);
  CHECK_STR(csv ? csv : "", "ID,Question,Answer,Image_Path,Result,Score,Analysis\r\n"
                            "1,\"Draw 2 cups, please\",2 cups.,d/1.png,YES,1,\"A\nB\"\r\n"
                            "2,q,3 cats,d/2.png,IMAGE_NOT_FOUND,0,Image file not found\r\n");
  char *want_log = xasprintf("============================================================\nEvaluation finished!\nTotal: 2\n"
                             "Correct: 1\nAccuracy: 50.00%%\nDuration: 1.23s\nCSV: %s\n"
                             "============================================================\n", csv_path);
  CHECK_STR(lg ? lg : "", want_log);
  CHECK_STR(log, want_log);
  free(csv); free(lg); free(log); free(want_log);
  /* mapping: group 7 has both (A YES, B NO), group 8 only B (YES) -> 0 of 2 */
  usbx_judge_row p[3] = {
    {USBX_TASK_MAPPING, S("7_B"), S("qb"), S("dog"), S("d/7_B.png"), S("cat"), S("an"), S("7"), USBX_V_NO, 0, 1},
    {USBX_TASK_MAPPING, S("7_A"), S("qa"), S("cup"), S("d/7_A.png"), S("mug"), S("am"), S("7"), USBX_V_YES, 1, 0},
    {USBX_TASK_MAPPING, S("8_B"), S("q8"), S("hat"), S("d/8_B.png"), S("hat"), S("ok"), S("8"), USBX_V_YES, 1, 1},
  };
  log = NULL;
  CHECK_EQ_INT(usbx_judge_write_report(dir, USBX_TASK_MAPPING, p, 3, 0, &log, err, sizeof err), 0);
  csv = usbx_read_file(csv_path, NULL);
  CHECK_STR(csv ? csv : "",
            "ID,Question_A,Answer_A,Image_A_Path,A_Result,A_Score,A_Analysis,Question_B,Answer_B,Image_B_Path,B_Result,B_Score,B_Analysis,Both_Correct,Final_Score\r\n"
            "7,qa,cup,d/7_A.png,YES,1,am,qb,dog,d/7_B.png,NO,0,an,False,0\r\n"
            "8,,,,,,,q8,hat,d/8_B.png,YES,1,ok,False,0\r\n");
  want_log = xasprintf("============================================================\nEvaluation finished!\nTotal IDs: 2\n"
                       "Correct IDs: 0\nAccuracy: 0.00%%\nCSV: %s\n============================================================\n", csv_path);
  CHECK_STR(log, want_log);
  free(csv); free(log); free(want_log);
  /* knowledge: Caption column; an ERROR row keeps Caption empty */
  usbx_judge_row k[2] = {
    {USBX_TASK_KNOWLEDGE, S("1"), S("q"), S("rose"), S("d/1.png"), S("Flower: rose"), S("x"), NULL, USBX_V_YES, 1, 0},
    {USBX_TASK_KNOWLEDGE, S("2"), S("q"), S("old man"), S("d/2.png"), S("Person: a"), S("Error: eval failed"), NULL, USBX_V_ERROR, 0, 0},
  };
  log = NULL;
  CHECK_EQ_INT(usbx_judge_write_report(dir, USBX_TASK_KNOWLEDGE, k, 2, 0, &log, err, sizeof err), 0);
  csv = usbx_read_file(csv_path, NULL);
  CHECK_STR(csv ? csv : "", "ID,Question,Answer,Image_Path,Caption,Result,Score,Analysis\r\n"
                            "1,q,rose,d/1.png,Flower: rose,YES,1,x\r\n2,q,old man,d/2.png,,ERROR,0,Error: eval failed\r\n");
  CHECK(strstr(log, "Total: 2\nCorrect: 1\nAccuracy: 50.00%\nCSV: ") != NULL);
  CHECK(strstr(log, "Duration") == NULL);
  free(csv); free(log);
  usbx_judge_row *all[3] = {m, p, k};
  size_t cnt[3] = {2, 3, 2};
  for (int a = 0; a < 3; a++)
    for (size_t i = 0; i < cnt[a]; i++) {
      usbx_judge_row *r = &all[a][i];
      free(r->id); free(r->question); free(r->answer); free(r->image); free(r->caption); free(r->analysis); free(r->group);
    }
  unlink(csv_path); unlink(log_path); rmdir(dir);
  free(csv_path); free(log_path);
}

static int g_no_shared;

static void t_prompts(void) {
  usbx_judge_prompts p;
  char err[512];
  CHECK_EQ_INT(usbx_judge_prompts_builtin(&p, err, sizeof err), 0);
  int want1[3] = {10240, 10240, 2048}, want2[3] = {10240, 10240, 1024};
  for (int t = 0; t < USBX_TASK_N; t++) {
    CHECK_EQ_INT(p.max_tokens1[t], want1[t]);
    CHECK_EQ_INT(p.max_tokens2[t], want2[t]);
  }
  /* the built-in set asks for the same output formats */
  CHECK(strstr(p.stage1[USBX_TASK_MATH], "Caption: ") && strstr(p.stage1[USBX_TASK_MATH], "'Error'"));
  CHECK(strstr(p.stage1[USBX_TASK_MAPPING], "Object: ") && strstr(p.stage1[USBX_TASK_MAPPING], "'Error'"));
  CHECK(strstr(p.stage1[USBX_TASK_KNOWLEDGE], "Person: ") && strstr(p.stage1[USBX_TASK_KNOWLEDGE], "'Reject'") &&
        strstr(p.stage1[USBX_TASK_KNOWLEDGE], "'Flower: ") && strstr(p.stage1[USBX_TASK_KNOWLEDGE], "'Fruit: "));
  for (int t = 0; t < USBX_TASK_N; t++) CHECK(strstr(p.stage2[t], "Score: YES") && strstr(p.stage2[t], "Score: NO"));
  char *s2 = usbx_judge_stage2_text(&p, USBX_TASK_MAPPING, "mug", "cup", err, sizeof err);
  CHECK(s2 && strstr(s2, "mug") && strstr(s2, "cup") && !strchr(s2, '{'));
  free(s2);
  usbx_judge_prompts_free(&p);
  /* broken sets are refused with the key named */
  const char *bad1 = "{\"math\":{\"caption\":\"c\",\"evaluate\":\"{caption} {expected_answer}\"},"
                     "\"mapping\":{\"identify\":\"i\",\"evaluate\":\"{identified_object} {foo}\"},"
                     "\"knowledge\":{\"caption\":\"k\",\"evaluate\":\"{caption} {gt}\"}}";
  CHECK_EQ_INT(usbx_judge_prompts_parse(&p, bad1, strlen(bad1), "bad1", err, sizeof err), -1);
  CHECK(strstr(err, "mapping.evaluate") && strstr(err, "{foo}"));
  const char *bad2 = "{\"math\":{\"caption\":\"c\",\"evaluate\":\"e\"}}";
  CHECK_EQ_INT(usbx_judge_prompts_parse(&p, bad2, strlen(bad2), "bad2", err, sizeof err), -1);
  CHECK(strstr(err, "mapping.identify") != NULL);

  const char *sh = t_shared();
  if (!sh) { g_no_shared = 1; return; }
  char *path = xasprintf("%s/upstream/eval_prompts.json", sh);
  CHECK_EQ_INT(usbx_judge_prompts_load(&p, path, err, sizeof err), 0);
  free(path);
  for (int t = 0; t < USBX_TASK_N; t++) {
    CHECK_EQ_INT(p.max_tokens1[t], want1[t]);
    CHECK_EQ_INT(p.max_tokens2[t], want2[t]);
  }
  /* hand-computed fills of the upstream templates */
  char *s = usbx_judge_stage2_text(&p, USBX_TASK_MATH, "Caption: 2 cups", "2 cups.", err, sizeof err);
  CHECK(s && strstr(s, "**Generated Caption:** Caption: 2 cups\n**Expected Answer:** 2 cups.\n\n---\n### **Output Format**"));
  CHECK(s && strlen(s) == strlen(p.stage2[0]) - strlen("{caption}{expected_answer}") + strlen("Caption: 2 cups2 cups."));
  free(s);
  s = usbx_judge_stage2_text(&p, USBX_TASK_MAPPING, "mug", "cup", err, sizeof err);
  CHECK(s && strstr(s, "**Identified Object:** mug\n**Expected Answer:** cup\n"));
  free(s);
  s = usbx_judge_stage2_text(&p, USBX_TASK_KNOWLEDGE, "Fruit: apple", "apples", err, sizeof err);
  CHECK(s && strstr(s, "Input:\nGenerated: Fruit: apple\nGroundTruth: apples\n\nOutput format (MUST be exact):\nScore: YES or Score: NO"));
  CHECK(s && strncmp(s, "You are a careful evaluator.", 28) == 0);
  free(s);
  CHECK(strncmp(p.stage1[USBX_TASK_MAPPING], "You are an extremely rigorous and neutral image analysis expert.", 64) == 0);
  usbx_judge_prompts_free(&p);
}

static void t_client_helpers(void) {
  const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
  const char *out[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
  for (int i = 0; i < 7; i++) CHECK_S(usbx_base64(in[i], strlen(in[i]), NULL), out[i]);
  size_t len;
  char *body = usbx_oai_chat_body("M", "data:image;base64,QUJD", "hello \"x\"", 2048, 0, &len);
  CHECK_EQ_INT(len, strlen(body));
  jv v = jv_parse(body);
  jv c0 = jv_array_get(jv_object_get(jv_array_get(jv_object_get(jv_copy(v), jv_string("messages")), 0), jv_string("content")), 0);
  jv t0 = jv_object_get(c0, jv_string("type"));
  CHECK_STR(jv_string_value(t0), "image_url");
  jv_free(t0);
  CHECK(strstr(body, "\"max_tokens\":2048") && strstr(body, "\"temperature\":0") && strstr(body, "\"model\":\"M\""));
  CHECK(strstr(body, "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image;base64,QUJD\"}},{\"type\":\"text\",\"text\":\"hello \\\"x\\\"\"}"));
  jv_free(v);
  free(body);
  body = usbx_oai_chat_body("M", NULL, "t", 10, 0, &len);
  CHECK(strstr(body, "\"messages\":[{\"role\":\"user\",\"content\":\"t\"}]") != NULL);
  free(body);
  jv r = jv_parse("{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"Score: YES\"}}]}");
  const char *c = usbx_oai_content(r);
  CHECK(c && strcmp(c, "Score: YES") == 0);
  jv_free(r);
  r = jv_parse("{\"choices\":[{\"message\":{\"content\":null}}]}");
  CHECK(usbx_oai_content(r) == NULL);
  jv_free(r);
  r = jv_parse("{\"choices\":[]}");
  CHECK(usbx_oai_content(r) == NULL);
  jv_free(r);
  char kf[] = "/tmp/usbx-test-key-XXXXXX";
  int fd = mkstemp(kf);
  CHECK(fd >= 0);
  CHECK(write(fd, "\n  sk-test-123  \nsecond\n", 24) == 24);
  close(fd);
  char *key = NULL, err[256];
  CHECK_EQ_INT(usbx_oai_read_key_file(kf, &key, err, sizeof err), 0);
  CHECK_S(key, "sk-test-123");
  unlink(kf);
  CHECK_EQ_INT(usbx_oai_read_key_file(kf, &key, err, sizeof err), -1);
}

int main(void) {
  t_strings();
  t_replies();
  t_analysis();
  t_csv();
  t_report();
  t_prompts();
  t_client_helpers();
  int rc = t_done("test_judge");
  if (rc == 0 && g_no_shared) T_SKIP("upstream prompt checks need ../shared/upstream/eval_prompts.json (the rest passed)");
  return rc;
}
