"""Names of the per-edit options — methods, template sets, apply policies — importable without torch.

The gateway validates requests against these and the engine runs them, so both agree.
"""

from __future__ import annotations

from typing import Literal, get_args

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{}", "Human: {}", "User: {}", "Hello world. {}", "I love China! {}",
    "I am an AI assistant. {}", "How about the weather today? {}", "The cat sat on the mat. {}",
    "I went to the store today. {}", "The sun shines brightly in summer. {}",
    "He loves to play the guitar. {}", "She smiled and waved goodbye. {}",
    "用户：{}", "你好，世界。{}", "我爱中国！{}", "我是一个人工智能助手。{}", "今天的天气怎么样？{}",
    "猫坐在垫子上。{}", "我今天去了商店。{}", "夏天太阳很刺眼。{}", "他喜欢弹吉他。{}", "她微笑着挥手道别。{}",
)  # fmt: skip

MethodName = Literal["creme", "least-squares", "local", "auto"]
METHODS: tuple[str, ...] = get_args(MethodName)
DEFAULT_METHOD: MethodName = "auto"

TemplateSetName = Literal["published", "english"]
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "published": DEFAULT_TEMPLATES,
    "english": tuple(t for t in DEFAULT_TEMPLATES if t.isascii()),
}

ApplyPolicy = Literal["if_safe", "always", "if_improved", "never"]
APPLY_POLICIES: tuple[str, ...] = get_args(ApplyPolicy)
DEFAULT_APPLY: ApplyPolicy = "if_safe"
