// hello: the same answer as every other peer's hello (bench/peers).
export default {
  async fetch(request) {
    const name = new URL(request.url).searchParams.get("name") ?? "world";
    return new Response(JSON.stringify({ message: `hello, ${name}!` }), {
      headers: { "content-type": "application/json" },
    });
  },
};
