// JSON-transform: reshape an order, as edgerun's json-transform handler does (bench/peers).
function reshape(order) {
  const items = order.items ?? [];
  let total = 0;
  let count = 0;
  for (const i of items) {
    total += (i.price ?? 0) * (i.qty ?? 1);
    count += i.qty ?? 1;
  }
  const customer = String(order.customer ?? "")
    .trim()
    .toLowerCase()
    .replace(/\b\w/g, (c) => c.toUpperCase());
  return {
    id: order.id ?? null,
    customer,
    count,
    total: Math.round(total * 100) / 100,
    skus: items.map((i) => i.sku ?? "").sort(),
  };
}

export default {
  async fetch(request) {
    const order = await request.json();
    return new Response(JSON.stringify(reshape(order)), {
      headers: { "content-type": "application/json" },
    });
  },
};
