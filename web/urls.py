"""The web app: chat, team rooms, knowledge bases (web.kb_urls), data sources (web.datasource_urls),
fine-tuning datasets (web.dataset_urls) and the account pages."""

from django.contrib.auth import views as auth_views
from django.urls import include, path

from web.views import account, chat, evaluation

app_name = "web"

urlpatterns = [
    path("", account.home, name="home"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="web/login.html", redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("team/", account.switch_team, name="switch-team"),
    path("language/", account.set_language, name="set-language"),
    path("chat/", chat.chat_home, name="chat"),
    path("chat/new/", chat.conversation_new, name="conversation-new"),
    path("chat/<int:pk>/", chat.conversation_page, name="conversation"),
    path("chat/<int:pk>/summary/", chat.summary_fragment, name="summary"),
    path("messages/<int:pk>/", chat.message_fragment, name="message"),
    path("messages/<int:pk>/evaluation/", evaluation.message_to_evaluation, name="message-evaluation"),
    path("sources/<int:chunk_id>/", chat.chunk_page, name="chunk"),
    path("documents/<int:document_id>/file/", chat.document_file, name="document-file"),
    path("kb/", include("web.kb_urls")),
    path("data/", include("web.datasource_urls")),
    path("datasets/", include("web.dataset_urls")),
]
