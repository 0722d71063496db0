/* test_sandbox — the offline judge reads sandbox renders exactly: every object class at every
 * count and size scores YES on its ground truth, perturbed renders get the right verdict, and the
 * scoring rules follow the VLM protocol. */
#include "testlib.h"
#include "render.h"
#include "sandbox.h"
#include "synth.h"
#include "png.h"
#include "util.h"
#include <unistd.h>

static int judge(const char *task, const uint8_t *rgb, int size, const char *expected, char **cap) {
  char *caption, *analysis;
  int yes = -1;
  usbx_sandbox_judge_rgb(task, rgb, size, size, expected, &caption, &analysis, &yes);
  free(analysis);
  if (cap) *cap = caption; else free(caption);
  return yes;
}

static int nfail_gt, ngt;
static void gt_case(const char *task, const uint8_t *rgb, int size, const char *expected, const char *want_caption) {
  char *cap;
  int yes = judge(task, rgb, size, expected, &cap);
  ngt++;
  if (!yes || (want_caption && strcmp(cap, want_caption))) {
    if (nfail_gt++ < 10) fprintf(stderr, "ground truth: task %s size %d expected \"%s\": caption \"%s\" yes=%d\n", task, size, expected, cap, yes);
  }
  CHECK(yes == 1);
  if (want_caption) CHECK_STR(cap, want_caption);
  free(cap);
}

int main(void) {
  char err[256];
  /* ---- icons are unique ---- */
  for (int i = 0; i < usbx_nobjects; i++) {
    int s, c, p;
    usbx_object_icon(i, &s, &c, &p);
    CHECK_EQ_INT(usbx_icon_object(s, c, p), i);
  }

  /* ---- ground truth: every class, counts 1..5 (and up to 9 at 128+), three sizes ---- */
  static const int sizes[] = {64, 128, 256};
  for (int si = 0; si < 3; si++) {
    int size = sizes[si];
    for (int obj = 0; obj < usbx_nobjects; obj++) {
      int maxn = size >= 128 ? 9 : 6;
      for (int n = 1; n <= maxn; n++) {
        if (size == 256 && n != 1 + obj % 9) continue;   /* keep the run short at 256 */
        uint64_t seed = usbx_hash64(&obj, sizeof obj, (uint64_t)(n * 1000 + size));
        uint8_t *rgb = usbx_render_count(obj, n, size, seed, err, sizeof err);
        CHECK(rgb != NULL);
        if (!rgb) continue;
        char *phrase = usbx_count_phrase(n, obj);
        char *expected = xasprintf("%s.", phrase);
        gt_case("math", rgb, size, expected, phrase);
        if (n == 1) {
          char *ocap = xasprintf("Object: %s", usbx_objects[obj].sing);
          gt_case("mapping", rgb, size, usbx_objects[obj].plural, ocap);
          free(ocap);
          if (usbx_objects[obj].kind != USBX_OBJ_THING) {
            char *kcap = xasprintf("%s: %s", usbx_objects[obj].kind == USBX_OBJ_FRUIT ? "Fruit" : "Flower", usbx_objects[obj].sing);
            gt_case("knowledge", rgb, size, usbx_objects[obj].plural, kcap);
            free(kcap);
          }
        }
        free(phrase); free(expected); free(rgb);
      }
    }
  }
  /* portraits: every attribute combination at 64 and 128 */
  for (int size = 64; size <= 128; size *= 2)
    for (int skin = 0; skin < 3; skin++)
      for (int hair = 0; hair < usbx_nhair; hair++)
        for (int age = 0; age < 3; age++)
          for (int g = 0; g < 2; g++) {
            usbx_character c = {.skin = skin, .hair = hair, .age = age, .gender = g};
            char *ans = usbx_portrait_answer(&c);
            uint8_t *rgb = usbx_render_answer("knowledge", ans, size, (uint64_t)(skin * 1000 + hair * 100 + age * 10 + g + size), err, sizeof err);
            CHECK(rgb != NULL);
            if (!rgb) { free(ans); continue; }
            char *want = xasprintf("Person: %s; %s; %s; %s", usbx_skin_names[skin], usbx_hair_names[hair], usbx_age_names[age], g ? "male" : "female");
            gt_case("knowledge", rgb, size, ans, want);
            free(want); free(ans); free(rgb);
          }
  fprintf(stderr, "ground truth: %d cases, %d failed\n", ngt, nfail_gt);
  CHECK(ngt > 1500);

  /* ---- perturbations: hundreds of cases, each with its right verdict ---- */
  usbx_rng r;
  usbx_rng_seed(&r, 42);
  int npert = 0, nbad = 0;
  for (int k = 0; k < 640; k++) {
    int kind = k % 8;
    int size = kind == 7 ? 128 + 64 * (k % 3) : (k / 8) % 3 == 0 ? 64 : (k / 8) % 3 == 1 ? 96 : 128;
    int obj = (int)usbx_rng_below(&r, (uint64_t)usbx_nobjects);
    int n = 1 + (int)usbx_rng_below(&r, 5);
    char *phrase = usbx_count_phrase(n, obj);
    char *expected = xasprintf("%s.", phrase);
    uint64_t seed = usbx_rng_u64(&r);
    uint8_t *rgb = NULL;
    int want_yes = 0;
    const char *want_cap = NULL;
    char *want_buf = NULL;
    if (kind == 0) {           /* one object added */
      rgb = usbx_render_count(obj, n + 1, size, seed, err, sizeof err);
      want_buf = usbx_count_phrase(n + 1, obj);
    } else if (kind == 1) {    /* one removed (none left: Error) */
      rgb = usbx_render_count(obj, n - 1, size, seed, err, sizeof err);
      want_buf = n - 1 ? usbx_count_phrase(n - 1, obj) : xstrdup("Error");
    } else if (kind == 2) {    /* a wrong class mixed in */
      int objs[9];
      for (int i = 0; i < n; i++) objs[i] = obj;
      int other = (obj + 1 + (int)usbx_rng_below(&r, (uint64_t)usbx_nobjects - 1)) % usbx_nobjects;
      objs[usbx_rng_below(&r, (uint64_t)n)] = other;
      if (n == 1) objs[1] = obj;
      rgb = usbx_render_scene(objs, n == 1 ? 2 : n, size, seed, err, sizeof err);
      want_cap = "Error";
    } else if (kind == 3) {    /* noise: still readable */
      rgb = usbx_render_count(obj, n, size, seed, err, sizeof err);
      usbx_perturb_noise(rgb, size, size, 8.0, seed + 1);
      want_yes = 1; want_cap = phrase;
    } else if (kind == 4) {    /* blur: still readable */
      rgb = usbx_render_count(obj, n, size, seed, err, sizeof err);
      usbx_perturb_blur(rgb, size, size, 1);
      want_yes = 1; want_cap = phrase;
    } else if (kind == 6) {    /* noise and blur together */
      rgb = usbx_render_count(obj, n, size, seed, err, sizeof err);
      usbx_perturb_noise(rgb, size, size, 12.0, seed + 2);
      usbx_perturb_blur(rgb, size, size, 1);
      want_yes = 1; want_cap = phrase;
    } else if (kind == 7) {    /* a stronger (5x5) blur on a larger image */
      rgb = usbx_render_count(obj, n, size, seed, err, sizeof err);
      usbx_perturb_blur(rgb, size, size, 2);
      want_yes = 1; want_cap = phrase;
    } else {                   /* blank (with a little noise) */
      rgb = usbx_render_count(obj, 0, size, seed, err, sizeof err);
      usbx_perturb_noise(rgb, size, size, 4.0, seed);
      want_cap = "Error";
    }
    if (want_buf) want_cap = want_buf;
    CHECK(rgb != NULL);
    if (rgb) {
      char *cap;
      int yes = judge("math", rgb, size, expected, &cap);
      npert++;
      if (yes != want_yes || strcmp(cap, want_cap)) {
        if (nbad++ < 10) fprintf(stderr, "perturbation %d (kind %d, %s, size %d): caption \"%s\" yes=%d, want \"%s\" %d\n", k, kind, expected, size, cap, yes, want_cap, want_yes);
      }
      CHECK_EQ_INT(yes, want_yes);
      CHECK_STR(cap, want_cap);
      /* mapping verdicts on the same images */
      if (kind == 2 || kind == 5) {
        char *mcap;
        CHECK_EQ_INT(judge("mapping", rgb, size, usbx_objects[obj].sing, &mcap), 0);
        CHECK_STR(mcap, "Object: Error");
        free(mcap);
      }
      free(cap);
      free(rgb);
    }
    free(want_buf); free(phrase); free(expected);
  }
  /* portraits: one attribute changed -> NO; noise or blur -> still YES */
  for (int k = 0; k < 120; k++) {
    int size = k % 2 ? 64 : 128;
    usbx_character c = {.skin = (int)usbx_rng_below(&r, 3), .hair = (int)usbx_rng_below(&r, (uint64_t)usbx_nhair),
                        .age = (int)usbx_rng_below(&r, 3), .gender = (int)usbx_rng_below(&r, 2)};
    char *ans = usbx_portrait_answer(&c);
    usbx_character d = c;
    int kind = k % 6;
    if (kind == 0) d.skin = (c.skin + 1 + (int)usbx_rng_below(&r, 2)) % 3;
    else if (kind == 1) d.hair = (c.hair + 1 + (int)usbx_rng_below(&r, (uint64_t)usbx_nhair - 1)) % usbx_nhair;
    else if (kind == 2) d.age = (c.age + 1 + (int)usbx_rng_below(&r, 2)) % 3;
    else if (kind == 3) d.gender = !c.gender;
    uint64_t seed = usbx_rng_u64(&r);
    uint8_t *rgb = usbx_render_portrait(d.skin, d.hair, d.age, d.gender, size, seed);
    if (kind == 4) usbx_perturb_noise(rgb, size, size, 8.0, seed);
    if (kind == 5) usbx_perturb_blur(rgb, size, size, 1);
    int want = kind >= 4;
    char *cap;
    int yes = judge("knowledge", rgb, size, ans, &cap);
    npert++;
    if (yes != want && nbad++ < 20) fprintf(stderr, "portrait perturbation %d (kind %d, size %d, seed %llu) \"%s\": caption \"%s\" yes=%d\n", k, kind, size, (unsigned long long)seed, ans, cap, yes);
    CHECK_EQ_INT(yes, want);
    /* a portrait is never a fruit */
    CHECK_EQ_INT(judge("knowledge", rgb, size, "apples", NULL), 0);
    free(cap); free(rgb); free(ans);
  }
  /* knowledge: a thing that is not a fruit or flower is rejected; a fruit is not a flower */
  {
    int thing = usbx_object_find("cup", NULL), fruit = usbx_object_find("apple", NULL);
    uint8_t *rgb = usbx_render_count(thing, 1, 128, 1, err, sizeof err);
    char *cap;
    CHECK_EQ_INT(judge("knowledge", rgb, 128, "cup", &cap), 0);
    CHECK_STR(cap, "Reject");
    free(cap); free(rgb);
    rgb = usbx_render_count(fruit, 2, 128, 1, err, sizeof err);
    CHECK_EQ_INT(judge("knowledge", rgb, 128, "apples", &cap), 1);
    CHECK_STR(cap, "Fruit: apple");
    free(cap);
    CHECK_EQ_INT(judge("knowledge", rgb, 128, "tulip", NULL), 0);
    free(rgb);
  }
  fprintf(stderr, "perturbations: %d cases, %d wrong\n", npert, nbad);
  CHECK(npert >= 760);

  /* ---- scoring rules ---- */
  CHECK_EQ_INT(usbx_sandbox_score("math", "2 cups", "2 cups."), 1);
  CHECK_EQ_INT(usbx_sandbox_score("math", "1 cup", "1 cups"), 1);
  CHECK_EQ_INT(usbx_sandbox_score("math", "2 cups", "2 dog"), 0);
  CHECK_EQ_INT(usbx_sandbox_score("math", "3 cups", "2 cups."), 0);
  CHECK_EQ_INT(usbx_sandbox_score("math", "Error", "2 cups."), 0);
  CHECK_EQ_INT(usbx_sandbox_score("math", "3 mice", "3 mouse"), 1);
  CHECK_EQ_INT(usbx_sandbox_score("mapping", "Object: chair", "Chairs"), 1);
  CHECK_EQ_INT(usbx_sandbox_score("mapping", "Object: Error", "chair"), 0);
  CHECK_EQ_INT(usbx_sandbox_score("mapping", "Object: table", "chair"), 0);
  CHECK_EQ_INT(usbx_sandbox_score("knowledge", "Fruit: peach", "peaches"), 1);
  CHECK_EQ_INT(usbx_sandbox_score("knowledge", "Flower: apple", "apple"), 0);
  CHECK_EQ_INT(usbx_sandbox_score("knowledge", "Reject", "apple"), 0);
  CHECK_EQ_INT(usbx_sandbox_score("knowledge", "Person: Caucasian; blond; kid; male", "A Caucasian kid with blond hair."), 1);
  CHECK_EQ_INT(usbx_sandbox_score("knowledge", "Person: Caucasian; blond; kid; female", "A Caucasian kid with blond hair."), 1);
  CHECK_EQ_INT(usbx_sandbox_score("knowledge", "Person: Caucasian; blond; old; male", "A Caucasian kid with blond hair."), 0);
  CHECK_EQ_INT(usbx_sandbox_score("knowledge", "Person: East Asian; white; old; male", "An elderly Caucasian man with white hair."), 0);
  CHECK_EQ_INT(usbx_sandbox_score("knowledge", "Person: Caucasian; white; old; female", "An elderly Caucasian man with white hair."), 0);
  CHECK_EQ_INT(usbx_sandbox_score("knowledge", "Person: Caucasian; white; old; male", "An elderly Caucasian man with white hair."), 1);
  CHECK_EQ_INT(usbx_sandbox_score("knowledge", "Person: Caucasian; white; old; male", "roses"), 0);

  /* ---- the file API ---- */
  {
    char dir[] = "/tmp/test_sandbox.XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char *path = xasprintf("%s/x.png", dir);
    int obj = usbx_object_find("teddy bear", NULL);
    uint8_t *rgb = usbx_render_count(obj, 3, 96, 5, err, sizeof err);
    CHECK_EQ_INT(usbx_png_write(path, rgb, 96, 96, 3), 0);
    free(rgb);
    char *cap = NULL, *an = NULL;
    int yes = -1;
    CHECK_EQ_INT(usbx_sandbox_judge("math", path, "3 teddy bears.", &cap, &an, &yes, err, sizeof err), 0);
    CHECK_EQ_INT(yes, 1);
    CHECK_STR(cap, "3 teddy bears");
    CHECK(strstr(an, "Score: YES") != NULL);
    free(cap); free(an);
    CHECK_EQ_INT(usbx_sandbox_judge("math", "/nonexistent/x.png", "3 cups", &cap, &an, &yes, err, sizeof err), 1);
    CHECK_EQ_INT(yes, 0);
    CHECK_STR(an, "Image file not found");
    free(cap); free(an);
    /* a file that is not an image */
    FILE *f = fopen(path, "w");
    fputs("not a png", f);
    fclose(f);
    CHECK_EQ_INT(usbx_sandbox_judge("math", path, "3 cups", &cap, &an, &yes, err, sizeof err), 1);
    CHECK_EQ_INT(yes, 0);
    free(cap); free(an);
    unlink(path);
    rmdir(dir);
    free(path);
  }
  return t_done("test_sandbox");
}
