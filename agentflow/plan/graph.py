"""The step graph: an order that respects dependencies, and its cycles.

Everything here is linear in nodes plus edges (times log n for the ordering heap). Nothing
computes transitive ancestors: their total size is quadratic for long chains (a chain of n
steps holds n*(n-1)/2 names: about 20 MB at 1,000 steps). An executor that needs "some
ancestor failed" propagates a flag along `dependents` as steps settle.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence, Set


def topological_order(nodes: Sequence[str], dependencies: Mapping[str, Set[str]]
                      ) -> tuple[list[str], list[list[str]]]:
    """Nodes so that each comes after its dependencies (ties in the order given), and cycles.

    Each cycle is a closed path `[a, b, c, a]` where each node depends on the next one; it
    starts at its earliest node, and each group of nodes in a cycle is reported once. When
    there are cycles, the order holds only the nodes that do not wait for one.
    """
    position = {node: index for index, node in enumerate(nodes)}
    dependents: dict[str, list[str]] = {node: [] for node in nodes}
    waiting: dict[str, int] = {}
    for node in nodes:
        waiting[node] = len(dependencies[node])
        for dependency in dependencies[node]:
            dependents[dependency].append(node)
    ready = [position[node] for node in nodes if waiting[node] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        for dependent in dependents[node]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, position[dependent])
    if len(order) == len(nodes):
        return order, []
    blocked = [node for node in nodes if waiting[node] > 0]
    edges = {node: sorted((dep for dep in dependencies[node] if waiting[dep] > 0),
                          key=position.__getitem__) for node in blocked}
    cycles = [_cycle_in(component, edges, position)
              for component in _strongly_connected(blocked, edges) if len(component) > 1]
    cycles.sort(key=lambda cycle: position[cycle[0]])
    return order, cycles


def _strongly_connected(nodes: list[str], edges: Mapping[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively (a deep graph must not exhaust Python's stack)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(edges[root]))]
        while work:
            node, children = work[-1]
            descended = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                    descended = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components


def _cycle_in(component: list[str], edges: Mapping[str, list[str]],
              position: Mapping[str, int]) -> list[str]:
    """A shortest closed path through the component's earliest node (breadth first)."""
    members = set(component)
    start = min(component, key=position.__getitem__)
    came_from: dict[str, str] = {}
    queue = [start]
    for node in queue:
        for child in edges[node]:
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if child in members and child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise AssertionError("every node of a strongly connected component is on a cycle")

